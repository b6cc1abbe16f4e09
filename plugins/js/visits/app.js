// A Plinth plugin in JavaScript: visit counters in the key-value store.
//
// POST /js/visits/{name} counts a visit and answers {"name", "visits"};
// GET  /js/visits/{name} answers the count so far (0 when never visited).
//
// Built by scripts/build-plugins.sh with componentize-js against wit/plugin.wit's
// `plugin-kv` world: the `handler` export is the entry point, and the capabilities are
// imported as modules named after their interfaces. A call whose WIT result is an error
// throws, with the error in `payload`.

import { get, increment } from 'plinth:plugin/kv@0.1.0';
import { log } from 'plinth:plugin/log@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(status, value) {
  return {
    status,
    headers: [['content-type', 'application/json; charset=utf-8']],
    body: encoder.encode(JSON.stringify(value)),
  };
}

/** The shared error body (docs/API.md "Errors"). */
function error(status, code, detail) {
  return json(status, { detail, code });
}

function param(request, name) {
  const found = request.params.find(([key]) => key === name);
  return found ? found[1] : '';
}

export const handler = {
  handle(request) {
    const name = param(request, 'name');
    const key = `visits:${name}`;
    let visits;
    try {
      if (request.method === 'POST') {
        visits = Number(increment(key, 1n, undefined));
        log('info', `visit ${visits} of ${name}`);
      } else {
        const stored = get(key);
        visits = stored === undefined ? 0 : Number(decoder.decode(stored));
      }
    } catch (err) {
      log('warn', `kv: ${JSON.stringify(err.payload ?? String(err))}`);
      return error(503, 'UNAVAILABLE', 'A required backend is unavailable: kv');
    }
    return json(200, { name, visits });
  },
};
