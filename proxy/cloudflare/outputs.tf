output "cache_ruleset_id" {
  description = "ID of the zone's http_request_cache_settings entry-point ruleset."
  value       = cloudflare_ruleset.cache_settings.id
}

output "proxy_read_timeout" {
  description = "Proxy Read Timeout in seconds that the origin must never stay silent past (524 otherwise)."
  value       = var.proxy_read_timeout
}
