-- wrk script: etcd lease keepalives through etcd's own JSON gateway
-- (POST /v3/lease/keepalive, the HTTP face of the LeaseKeepAlive stream),
-- cycling over the lease IDs listed one per line in $WEFT_BENCH_LEASES.
local ids = {}
for line in io.lines(os.getenv("WEFT_BENCH_LEASES")) do ids[#ids + 1] = line end
local i = 0
local headers = {["Content-Type"] = "application/json"}
request = function()
  i = i % #ids + 1
  return wrk.format("POST", "/v3/lease/keepalive", headers, '{"ID":"' .. ids[i] .. '"}')
end
