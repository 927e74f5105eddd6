variable "zone_id" {
  type        = string
  description = "ID of the Cloudflare zone that proxies the dlkit API (orange-clouded DNS record)."
}

variable "proxy_read_timeout" {
  type        = number
  description = "Cloudflare's Proxy Read Timeout in seconds: when the origin sends nothing for this long, Cloudflare answers 524 to the client. The documented default is 100 s; values above 100 need an Enterprise plan (up to 6000). Keep long work off the request path (initiate + status) rather than raising it."
  default     = 100

  validation {
    condition     = var.proxy_read_timeout >= 1 && var.proxy_read_timeout <= 6000 && floor(var.proxy_read_timeout) == var.proxy_read_timeout
    error_message = "proxy_read_timeout must be a whole number of seconds from 1 to 6000."
  }
}

variable "manage_proxy_read_timeout" {
  type        = bool
  description = "Whether to write proxy_read_timeout to the zone. Set false where the plan does not let you change it (the setting then reports editable = false): the zone keeps Cloudflare's default and proxy_read_timeout only records the value `dlkit audit` assumes."
  default     = true
}

variable "bypass_cache_path_prefixes" {
  type        = list(string)
  description = "URI path prefixes that Cloudflare must never cache: the API, including job status and the presigned-URL redirects."
  default     = ["/v1/"]
}

variable "bypass_cache_paths" {
  type        = list(string)
  description = "Exact URI paths that Cloudflare must never cache, such as the health check."
  default     = ["/health"]
}
