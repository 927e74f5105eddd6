// Per-layer request counters for Prometheus, kept by nginx itself (njs, no log scraping).
//
// Each nginx of the chain (edge, lb, nginx) loads this file. `count` is bound to a variable with
// js_set and that variable is written by an access log, so it runs once per request in the log
// phase, when the final status is known; `metrics` serves the counters in Prometheus' text format.
// The counters live in a js_shared_dict_zone, shared by every worker process of that nginx.
// (njs is not full ES2015: no destructuring, hence the index loops.)

function count(r) {
    const key = r.variables.dlkit_layer + ' ' + r.variables.dlkit_route + ' ' + r.status;
    ngx.shared.dlkit_requests.incr(key, 1, 0);
    return '';
}

function metrics(r) {
    const lines = [
        '# HELP dlkit_proxy_requests_total Requests answered by a proxy layer, by route class and status.',
        '# TYPE dlkit_proxy_requests_total counter',
    ];
    const items = ngx.shared.dlkit_requests.items();
    for (let i = 0; i < items.length; i++) {
        const parts = items[i][0].split(' ');
        lines.push('dlkit_proxy_requests_total{layer="' + parts[0] + '",route="' + parts[1] + '",status="'
                   + parts[2] + '"} ' + items[i][1]);
    }
    r.headersOut['Content-Type'] = 'text/plain; version=0.0.4; charset=utf-8';
    r.return(200, lines.join('\n') + '\n');
}

export default {count, metrics};
