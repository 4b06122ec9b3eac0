-- wrk script: the same create-user request usergated sends to the upstream
-- (POST, form body, its Content-Type), so wrk measures the HTTP limit of
-- this machine for exactly this exchange.
wrk.method = "POST"
wrk.body = "Identity=user1%40example.com&FriendlyName=User%201&Attributes=%7B%22n%22%3A%201%7D"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
wrk.headers["Accept"] = "application/json"
-- usergated authenticates every request; so does wrk (SK...:secret).
wrk.headers["Authorization"] = "Basic U0swMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjpzM2NyM3Q="
