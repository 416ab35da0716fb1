-- TreeHouse: lead scoring (contact.created -> lead.scored), as in the Go original.
--   company size  > 500: +50 enterprise   > 100: +30 mid_market   > 20: +10 smb
--   title         CEO/CTO/VP: +40 executive   Director/Manager: +20 manager
--   industry      technology or finance: +15 target_industry

function process(contact)
  local score = 0
  local signals = {}

  local size = contact.company_size or 0
  if size > 500 then
    score = score + 50; table.insert(signals, "enterprise")
  elseif size > 100 then
    score = score + 30; table.insert(signals, "mid_market")
  elseif size > 20 then
    score = score + 10; table.insert(signals, "smb")
  end

  local title = contact.title or ""
  if contains(title, "CEO") or contains(title, "CTO") or contains(title, "VP") then
    score = score + 40; table.insert(signals, "executive")
  elseif contains(title, "Director") or contains(title, "Manager") then
    score = score + 20; table.insert(signals, "manager")
  end

  local industry = contact.industry or ""
  if industry == "technology" or industry == "finance" then
    score = score + 15; table.insert(signals, "target_industry")
  end

  return {
    contact_id = contact.id,
    email = contact.email,
    score = score,
    signals = signals,
  }
end
