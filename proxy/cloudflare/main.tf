locals {
  # One Rules-language expression: any listed prefix, or any listed exact path.
  bypass_cache_expression = join(" or ", concat(
    [for prefix in var.bypass_cache_path_prefixes : "starts_with(http.request.uri.path, \"${prefix}\")"],
    [for path in var.bypass_cache_paths : "http.request.uri.path eq \"${path}\""],
  ))
}

# The zone's entry-point ruleset for the cache-settings phase. A zone has exactly one, so this
# resource owns every cache rule of the zone: add other cache rules here, not beside it.
resource "cloudflare_ruleset" "cache_settings" {
  zone_id     = var.zone_id
  name        = "dlkit cache settings"
  description = "Never cache the dlkit API: job status, redirects and health must always reach the origin."
  kind        = "zone"
  phase       = "http_request_cache_settings"

  rules = [
    {
      # A stable ref keeps the rule's identity across edits instead of replacing it.
      ref         = "dlkit_bypass_api"
      description = "Bypass cache for the API and the health check"
      expression  = local.bypass_cache_expression
      action      = "set_cache_settings"
      # Dynamic answers are not cached by default; this also wins over a zone-wide
      # "cache everything" rule, which would otherwise freeze a job's status.
      action_parameters = {
        cache = false
      }
      enabled = true
    },
  ]
}

# Cloudflare's default Proxy Read Timeout, in seconds, as its documentation has stated it: 100,
# and 125 on the newer pages. dlkit/kit/timeouts.py knows the same two values.
locals {
  default_proxy_read_timeouts = [100, 125]
}

# The time Cloudflare waits between two reads from the origin before answering 524. Enterprise
# only: on any other plan the API refuses the change (the setting reports editable = false).
resource "cloudflare_zone_setting" "proxy_read_timeout" {
  count = var.enterprise ? 1 : 0

  zone_id    = var.zone_id
  setting_id = "proxy_read_timeout"
  value      = var.proxy_read_timeout
}

# Outside Enterprise the zone runs Cloudflare's default whatever proxy_read_timeout says: warn
# when the value recorded for the audit cannot be the one clients meet.
check "proxy_read_timeout_needs_enterprise" {
  assert {
    condition     = var.enterprise || contains(local.default_proxy_read_timeouts, var.proxy_read_timeout)
    error_message = "proxy_read_timeout = ${var.proxy_read_timeout} takes effect only with enterprise = true; this zone keeps Cloudflare's default (100 s or 125 s)."
  }
}
