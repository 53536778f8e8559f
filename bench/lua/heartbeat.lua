-- wrk script: PUT heartbeats cycling over N pre-registered instances.
local n = tonumber(os.getenv("WEFT_BENCH_INSTANCES") or "1000")
local i = 0
request = function()
  i = (i + 1) % n
  return wrk.format("PUT", "/v1/services/bench/instances/i" .. i .. "/heartbeat")
end
