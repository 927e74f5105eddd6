// Header values nginx passes on but gunicorn refuses with an HTML 400: control characters (RFC 9110
// 5.5 allows none but tab; gunicorn checks [\x00-\x08\x0a-\x1f\x7f]). nginx has no variable for "any
// header", so dlkit.conf.template binds `invalid` to one with js_set and refuses the request itself
// with a problem document. (njs is not full ES2015: no destructuring, hence the index loop.)

const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

function invalid(r) {
    const headers = r.rawHeadersIn;
    for (let i = 0; i < headers.length; i++) {
        if (CONTROL.test(headers[i][1])) {
            return '1';
        }
    }
    return '';
}

export default {invalid};
