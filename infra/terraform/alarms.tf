# 504s the ALB makes itself (a target silent past the idle timeout: the legacy `start` route does
# this by design, so expect this alarm while reproducing the problem) and 5xx the targets answer.
locals {
  alb_alarms = {
    elb-504 = {
      metric      = "HTTPCode_ELB_504_Count"
      description = "The ALB answered 504: a target sent nothing for idle_timeout (60 s). Only the legacy start route should ever do this."
    }
    target-5xx = {
      metric      = "HTTPCode_Target_5XX_Count"
      description = "nginx or the API answered 5xx (502/504 from nginx, 503 from the API when Redis or S3 fails)."
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "alb" {
  for_each = local.alb_alarms

  alarm_name          = "${local.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = "AWS/ApplicationELB"
  metric_name         = each.value.metric
  dimensions          = { LoadBalancer = module.alb.lb_arn_suffix }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 5
  # No request, no datapoint: quiet is healthy.
  treat_missing_data = "notBreaching"
  alarm_actions      = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions         = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
}
