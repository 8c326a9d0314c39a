// The tests' OpenID provider: panva's oidc-provider (OpenID Certified), configured from the JSON
// file tests/support/oidc.py writes, behind the few things a provider leaves to its host:
//
//     node tests/oidc-provider/provider.mjs CONFIG.json
//
// - the login page (oidc-provider's interactions): username and password checked against the
//   configured users; consent is implied, the clients being the tests' own (first-party);
// - accounts and their claims (findAccount), from the configured users;
// - CI tokens: the client_credentials grant with a resource indicator (RFC 8707) gives a JWT
//   access token (RFC 9068) for that resource, carrying the client's extra claims;
// - for the tests alone, under /_test/: how many times /jwks was fetched, and a reload of the
//   signing keys from their folder. oidc-provider takes its keys when it is built, so a reload
//   builds a new Provider with the new key set (what a restart would do) on the same listener,
//   which keeps the count and the port.
//
// CONFIG.json: {"issuer": URL, "port": N, "keys_dir": PATH (PKCS#8 PEM files, KID.pem),
//   "clients": [oidc-provider client metadata, plus "token_claims": {...} for CI tokens],
//   "resources": [resource indicators the CI client may ask tokens for],
//   "users": [{"username", "password", "sub", ...claims}]}

import { createPrivateKey, randomBytes, timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users.map((u) => ({ preferred_username: u.username, ...u }));
const tokenClaims = Object.fromEntries(config.clients.map((c) => [c.client_id, c.token_claims]));
const clients = config.clients.map(({ token_claims: _, ...metadata }) => metadata);
const resources = new Set(config.resources);
const COOKIE_KEYS = [randomBytes(32).toString('base64url')];
const JWKS_PATH = '/jwks'; // oidc-provider's default, named so that fetches can be counted

// OIDC Core 5.4: which claims each scope releases. Claims of the users beyond the standard
// ones (e.g. groups) go with `profile`.
const EMAIL = ['email', 'email_verified'];
const HIDDEN = new Set(['username', 'password', 'sub', ...EMAIL]);
const PROFILE = ['name', 'preferred_username'];
for (const user of users) {
  for (const claim of Object.keys(user)) {
    if (!HIDDEN.has(claim) && !PROFILE.includes(claim)) PROFILE.push(claim);
  }
}

function signingKeys() {
  // Oldest first: the key the provider signs with stays the one it started with.
  const files = readdirSync(config.keys_dir).filter((f) => f.endsWith('.pem'));
  const mtime = (f) => statSync(join(config.keys_dir, f)).mtimeMs;
  files.sort((a, b) => mtime(a) - mtime(b) || a.localeCompare(b));
  return files.map((f) => ({
    ...createPrivateKey(readFileSync(join(config.keys_dir, f))).export({ format: 'jwk' }),
    kid: f.slice(0, -'.pem'.length),
    use: 'sig',
  }));
}

function userClaims(user) {
  return Object.fromEntries(Object.entries(user).filter(([k]) => k !== 'username' && k !== 'password'));
}

function build() {
  const keys = signingKeys();
  const provider = new Provider(config.issuer, {
    clients,
    jwks: { keys },
    routes: { jwks: JWKS_PATH },
    cookies: { keys: COOKIE_KEYS },
    claims: { openid: ['sub'], email: EMAIL, profile: PROFILE },
    async findAccount(ctx, sub) {
      const user = users.find((u) => u.sub === sub);
      return user && { accountId: sub, claims: async () => userClaims(user) };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    // RFC 7636: every authorization code is bound to a PKCE challenge, confidential clients too.
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        async getResourceServerInfo(ctx, resource, client) {
          if (!resources.has(resource) || !client.grantTypeAllowed('client_credentials')) {
            throw new errors.InvalidTarget(`no tokens for ${resource} here`);
          }
          return { audience: resource, scope: '', accessTokenFormat: 'jwt', accessTokenTTL: 300 };
        },
      },
    },
    async extraTokenClaims(ctx, token) {
      return token.kind === 'ClientCredentials' ? tokenClaims[token.clientId] : undefined;
    },
  });
  return { provider, handle: provider.callback(), kids: keys.map((k) => k.kid) };
}

let current = build();
let jwksFetches = 0;

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, clientId, error) {
  const alert = error ? `<p role="alert" class="err">${escape(error)}</p>` : '';
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Test OpenID provider: sign in</title>
<style>body{font:16px system-ui,sans-serif;background:#eef1f6;margin:0}main{max-width:22rem;margin:3rem auto;
background:#fff;padding:1.5rem;border-radius:8px;box-shadow:0 1px 4px #0002}label{display:block;font-weight:600;
margin-top:.8rem}input{width:100%;padding:.5rem;box-sizing:border-box}
button{margin-top:1rem;padding:.5rem 1rem;background:#3b3b98;color:#fff;border:0;border-radius:4px}
.err{color:#b3261e}</style></head><body><main><h1>Test provider</h1>
<p>Signing in to <strong>${escape(clientId)}</strong></p>${alert}
<form method="post" action="/interaction/${escape(uid)}/login">
<label for="username">Username</label><input type="text" id="username" name="username" autocomplete="username">
<label for="password">Password</label><input type="password" id="password" name="password"
 autocomplete="current-password"><button type="submit">Sign in</button></form></main></body></html>`;
}

function send(res, status, body, type = 'text/html; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store' });
  res.end(body);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function samePassword(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

async function interaction(req, res, uid, action) {
  const { provider } = current;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch', 'text/plain');
  const { prompt, params } = details;
  if (prompt.name === 'consent') {
    // The clients are the tests' own: grant what the request asks for, as a first-party
    // provider would without asking.
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const result = { consent: { grantId: await grant.save() } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  }
  if (prompt.name !== 'login') return send(res, 501, `no page for the ${prompt.name} prompt`, 'text/plain');
  if (action === undefined && req.method === 'GET') return send(res, 200, loginPage(uid, params.client_id));
  if (action !== 'login' || req.method !== 'POST') return send(res, 404, 'not found', 'text/plain');
  const form = await readForm(req);
  const user = users.find((u) => u.username === form.get('username'));
  if (!user || !samePassword(user.password, form.get('password') || '')) {
    return send(res, 401, loginPage(uid, params.client_id, 'Wrong username or password.'));
  }
  const result = { login: { accountId: user.sub } };
  return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

async function route(req, res) {
  const { pathname } = new URL(req.url, config.issuer);
  const page = pathname.match(/^\/interaction\/([\w-]+)(?:\/(\w+))?$/);
  if (page) return interaction(req, res, page[1], page[2]);
  if (pathname === '/_test/stats' && req.method === 'GET') {
    return send(res, 200, JSON.stringify({ jwks_fetches: jwksFetches, kids: current.kids }), 'application/json');
  }
  if (pathname === '/_test/reload-keys' && req.method === 'POST') {
    current = build();
    return send(res, 200, JSON.stringify({ kids: current.kids }), 'application/json');
  }
  if (pathname === JWKS_PATH && req.method === 'GET') jwksFetches += 1;
  return current.handle(req, res);
}

createServer((req, res) => {
  route(req, res).catch((err) => {
    console.error(err);
    if (!res.headersSent) send(res, err.statusCode || 500, String(err.message || err), 'text/plain');
  });
}).listen(config.port, '127.0.0.1', () => console.log(`listening on ${config.issuer}`));
