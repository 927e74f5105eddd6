output "idle_timeout" {
  description = "ALB idle timeout in seconds: the longest a response may stay silent, and the floor for nginx's keepalive_timeout."
  value       = aws_lb.this.idle_timeout
}

output "lb_arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "lb_arn_suffix" {
  description = "ARN suffix of the load balancer, the LoadBalancer dimension of its CloudWatch metrics."
  value       = aws_lb.this.arn_suffix
}

output "dns_name" {
  description = "DNS name of the load balancer (the origin a CDN or a Route 53 alias points at)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Canonical hosted zone ID of the load balancer, for Route 53 alias records."
  value       = aws_lb.this.zone_id
}

output "target_group_arn" {
  description = "ARN of the nginx target group: register instances, ECS services or an Auto Scaling group with it."
  value       = aws_lb_target_group.nginx.arn
}

output "https_listener_arn" {
  description = "ARN of the HTTPS listener."
  value       = aws_lb_listener.https.arn
}

output "http_listener_arn" {
  description = "ARN of the HTTP listener that redirects to HTTPS."
  value       = aws_lb_listener.http.arn
}
