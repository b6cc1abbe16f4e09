// The {name} plugin, made by `plinth new --lang js`: GET /{name}/{who} greets `who`.
//
// componentize-js builds it against wit/plugin.wit's `plugin-kv` world (README.md): the
// `handler` export is the entry point, and the capabilities are modules named after their
// interfaces (`plinth:plugin/log@0.1.0`, `plinth:plugin/kv@0.1.0`).

import { log } from 'plinth:plugin/log@0.1.0';

const encoder = new TextEncoder();

export function greeting(who) {
  return { message: `Hello, ${who}!` };
}

export const handler = {
  handle(request) {
    const found = request.params.find(([key]) => key === 'who');
    const who = found ? found[1] : '';
    log('debug', `greeting ${who}`);
    return {
      status: 200,
      headers: [['content-type', 'application/json; charset=utf-8']],
      body: encoder.encode(JSON.stringify(greeting(who))),
    };
  },
};
