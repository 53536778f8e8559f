-- wrk script: PUT registrations of distinct instances (a new id per request).
local i = 0
local body = '{"address":"10.1.2.3","port":8080,"tags":["bench"],"ttl":"300s"}'
request = function()
  i = i + 1
  return wrk.format("PUT", "/v1/services/reg/instances/r" .. i .. "-" .. math.random(1e9), nil, body)
end
