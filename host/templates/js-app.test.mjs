// Runs with plain Node (`node --test`): the plugin's handler without a host. The
// capability modules exist only inside the component: stand-ins are resolved here.
import assert from 'node:assert/strict';
import { register } from 'node:module';
import test from 'node:test';

const stubs = `
  export const logged = [];
  export function log(level, message) { logged.push([level, message]); }
`;
register(
  'data:text/javascript,' +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier.startsWith('plinth:plugin/')) {
          return { url: 'data:text/javascript,' + encodeURIComponent(${JSON.stringify(stubs)}), shortCircuit: true };
        }
        return next(specifier, context);
      }`),
);

const { handler } = await import('./app.js');
const { logged } = await import('plinth:plugin/log@0.1.0');

test('greets by name', () => {
  const response = handler.handle({
    method: 'GET',
    path: '/{name}/ana',
    query: '',
    headers: [],
    body: new Uint8Array(),
    route: '/{name}/{who}',
    params: [['who', 'ana']],
    requestId: 'test',
    principal: undefined,
  });
  assert.equal(response.status, 200);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(response.body)), { message: 'Hello, ana!' });
  assert.deepEqual(logged, [['debug', 'greeting ana']]);
});
