-- Base64 (RFC 4648, with padding) for wrk's LuaJIT: etcd's JSON API takes keys and values in base64.
local bit = require("bit")
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
return function(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    local function char(shift)
      local k = bit.band(bit.rshift(n, shift), 63) + 1
      return alphabet:sub(k, k)
    end
    out[#out + 1] = char(18) .. char(12) .. (b and char(6) or "=") .. (c and char(0) or "=")
  end
  return table.concat(out)
end
