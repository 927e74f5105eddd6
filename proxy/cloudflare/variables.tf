variable "zone_id" {
  type        = string
  description = "ID of the Cloudflare zone that proxies the dlkit API (orange-clouded DNS record)."
}

variable "proxy_read_timeout" {
  type        = number
  description = "Cloudflare's Proxy Read Timeout in seconds: when the origin sends nothing for this long, Cloudflare answers 524 to the client. Only an Enterprise zone can change it (up to 6000; see enterprise); any other zone keeps Cloudflare's default, documented as 100 s and, more recently, 125 s. Keep long work off the request path (initiate + status) rather than raising it."
  default     = 100

  validation {
    condition     = var.proxy_read_timeout >= 1 && var.proxy_read_timeout <= 6000 && floor(var.proxy_read_timeout) == var.proxy_read_timeout
    error_message = "proxy_read_timeout must be a whole number of seconds from 1 to 6000."
  }
}

variable "enterprise" {
  type        = bool
  description = "Whether the zone is on an Enterprise plan, the only plan whose Proxy Read Timeout can be changed. When false (the default) the module leaves the setting alone: the zone keeps Cloudflare's default (100 s, documented as 125 s lately) and proxy_read_timeout only records the value `dlkit audit` assumes."
  default     = false
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
