"""gunicorn settings for the API: `gunicorn -c app/gunicorn_conf.py "app:create_app()"`.

gthread workers, because sync workers ignore keep-alive and a keep-alive shorter than the load
balancer's idle timeout makes the LB reuse a connection gunicorn just closed (-> 502).
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Each legacy synchronous request occupies a thread for its whole delay.
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Longer than any LB idle timeout in front (ALB default 60 s, nginx upstream keepalive_timeout).
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE_S", "75"))
# gthread workers heartbeat from their main loop, so a long request does not trip this;
# it only kills a worker that is really stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT_S", "30"))
graceful_timeout = 30
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
