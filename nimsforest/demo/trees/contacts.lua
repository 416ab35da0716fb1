-- Tree: a CRM webhook delivery (or a payload flowed directly) -> contact.created.
-- Input: the River JSON. From the webhook source it is {source, headers, body, ...};
-- from `nimsforest flow contacts JSON` it is the JSON itself. Returns nil to ignore.

function process(input)
  local p = input.body or input
  if p.event ~= "contact.created" or type(p.contact) ~= "table" then
    return nil
  end
  local c = p.contact
  if not c.id then
    log("contact without id ignored")
    return nil
  end
  local company = c.company or {}
  local name = table.concat({c.first_name or "", c.last_name or ""}, " "):match("^%s*(.-)%s*$")
  return {
    id = tostring(c.id),
    email = c.email,
    name = name ~= "" and name or nil,
    title = c.title or "",
    company = company.name,
    company_size = tonumber(company.size) or 0,
    industry = string.lower(company.industry or ""),
  }
end
