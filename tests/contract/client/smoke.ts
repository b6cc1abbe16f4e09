// A client team's first script against Plinth, typed entirely by what openapi-typescript
// generated from the host's /openapi.json (schema.d.ts): register, log in, read /users/me.
// A route, field or status missing from the document fails `tsc --strict`, before anything
// runs. Usage: PLINTH_URL=http://127.0.0.1:8080 node dist/smoke.js
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type User = components["schemas"]["User"];

const baseUrl = process.env["PLINTH_URL"];
if (!baseUrl) throw new Error("set PLINTH_URL");
const api = createClient<paths>({ baseUrl });

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`client smoke: ${what}`);
}

const suffix = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
const email = `client-${suffix}@example.com`;
const password = `pw-${suffix}-client`;

const registered = await api.POST("/api/v1/auth/register", {
  body: { email, username: `client_${suffix}`, password, full_name: "Client Smoke" },
});
check(registered.response.status === 201, `register answered ${registered.response.status}`);
const user: User | undefined = registered.data;
check(user !== undefined && user.email === email, "register returned the user");

const again = await api.POST("/api/v1/auth/register", {
  body: { email, username: `other_${suffix}`, password },
});
check(again.response.status === 409, `a second registration answered ${again.response.status}`);
check(again.error?.code === "EMAIL_TAKEN", `the conflict's code is ${again.error?.code}`);

const login = await api.POST("/api/v1/auth/login", { body: { email, password } });
check(login.data !== undefined, `login answered ${login.response.status}`);
check(login.data.token_type === "bearer", "a bearer token pair");

const me = await api.GET("/api/v1/users/me", {
  headers: { Authorization: `Bearer ${login.data.access_token}` },
});
check(me.data !== undefined, `GET /users/me answered ${me.response.status}`);
check(me.data.id === user.id && me.data.full_name === "Client Smoke", "the same user");

const stranger = await api.GET("/api/v1/users/me");
check(stranger.response.status === 401, `without a token: ${stranger.response.status}`);
check(stranger.error?.code === "NOT_AUTHENTICATED", "the 401's code");

console.log(`client smoke: registered, logged in and read user ${me.data.id} through the generated types`);
