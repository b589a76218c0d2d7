-- wrk: every request carries a different pre-minted token (scenario 2), so no cache can help.
-- Arguments after `--`: TOKEN_FILE API_KEY PATH THREADS. Thread i sends tokens i, i+T, i+2T, ...
-- of the file, so no two threads send the same token; a thread starts over only after its
-- share of the file is used up (run.sh reports token-cache hits to show whether that happened).
local counter = 0
function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

local tokens, i, n = {}, 1, 0
local key, path

function init(args)
   local file, threads = args[1], tonumber(args[4])
   key, path = args[2], args[3]
   local all = {}
   for line in io.lines(file) do
      if #line > 0 then all[#all + 1] = line end
   end
   for j = tid + 1, #all, threads do
      tokens[#tokens + 1] = "Bearer " .. all[j]
   end
   n = #tokens
end

function request()
   local t = tokens[i]
   i = i + 1
   if i > n then i = 1 end
   return wrk.format("GET", path, { ["Authorization"] = t, ["x-api-key"] = key })
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
