// Service tokens with the official `@smithery/api` SDK, as a backend and its user would use them:
// the backend mints a scoped token with its API key (`client.tokens.create`), then a client built
// on that token alone lists, reads and calls over REST, over `createConnection()` (the official MCP
// client at /connect/{ns}/{id}/mcp) and over the namespace endpoint /mcp/{ns}.
//
// usage: node --import ./fence.mjs smithery_tokens.mjs '{"namespace": "...", "policy": [...], "own": "...", "other": "..."}'
//        own: a connection the policy grants; other: one it hides.
// env:   SMITHERY_API_KEY (the backend's key), SMITHERY_BASE_URL, SMITHERY_CONNECT_BASE_URL;
//        JUNCTION_NODE_PREFIX, JUNCTION_REQUEST_LOG as for smithery_sdk.mjs.
// Prints one JSON object of results on stdout; any unexpected error goes to stderr with exit 1.
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const prefix = process.env.JUNCTION_NODE_PREFIX ?? join(dirname(fileURLToPath(import.meta.url)), '..', '.node');
const { load } = await import(pathToFileURL(join(prefix, 'load.mjs')).href);
const { default: Smithery, NotFoundError } = await load('@smithery/api');
const { createConnection } = await load('@smithery/api/mcp');
const { Client } = await load('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = await load('@modelcontextprotocol/sdk/client/streamableHttp.js');

const { namespace, policy, own, other } = JSON.parse(process.argv[2] ?? '{}');
if (!namespace || !policy || !own || !other) throw new Error('need namespace, policy, own and other');
if (globalThis.fetch.name !== 'fencedFetch') throw new Error('run with: node --import ./fence.mjs smithery_tokens.mjs');

// An expected failure, as data: the SDK's API error class and status, or the MCP client's error.
async function outcome(promise) {
  try {
    return { ok: true, value: await promise };
  } catch (e) {
    if (!(e instanceof Error)) throw e;
    return {
      ok: false,
      class: e.constructor.name,
      status: e.status ?? null,
      code: e.code ?? null,
      body: e.error ?? null,
      message: e.message,
      isNotFound: e instanceof NotFoundError,
    };
  }
}

async function overMcp(transport, calls) {
  const mcp = new Client({ name: 'junction-token-test', version: '1.0.0' }, { capabilities: {} });
  await mcp.connect(transport);
  const result = { tools: (await mcp.listTools()).tools.map((t) => t.name).sort(), calls: {} };
  for (const [name, args] of calls) result.calls[name] = await outcome(mcp.callTool({ name, arguments: args }));
  await transport.terminateSession();
  await mcp.close();
  return result;
}

const ids = (page) => page.connections.map((c) => c.connectionId).sort();
const out = {};

// The backend: its API key mints a token for one user.
const backend = new Smithery();
const minted = await backend.tokens.create({ policy });
out.minted = minted;

// The user's client knows nothing but the token.
const user = new Smithery({ apiKey: minted.token });
out.apiKeyIsToken = user.apiKey === minted.token;
out.list = ids(await user.connections.list(namespace));
out.listOtherUser = ids(await user.connections.list(namespace, { metadata: { userId: 'bob' } }));
out.getOwn = await user.connections.get(own, { namespace });
out.getOther = await outcome(user.connections.get(other, { namespace }));
out.toolsOwn = (await user.connections.tools.list(own, { namespace })).tools.map((t) => t.name).sort();
out.toolsOther = await outcome(user.connections.tools.list(other, { namespace }));
out.callOwn = await user.connections.tools.call('echo', { namespace, connectionId: own, body: { text: 'mine' } });
out.callOther = await outcome(
  user.connections.tools.call('echo', { namespace, connectionId: other, body: { text: 'theirs' } }),
);
out.deleteOther = await outcome(user.connections.delete(other, { namespace }));

// MCP through createConnection(): the token rides as the client's apiKey.
out.mcpOwn = await overMcp((await createConnection({ client: user, namespace, connectionId: own })).transport, [
  ['echo', { text: 'mine over mcp' }],
]);
// createConnection() looks the connection up first, so the hidden one fails there, as a 404...
out.mcpOther = await outcome(createConnection({ client: user, namespace, connectionId: other }));
// ...and a client that goes straight to its MCP URL is refused by the gateway with the same 404.
const direct = new StreamableHTTPClientTransport(new URL(`/connect/${namespace}/${other}/mcp`, user.connectBaseURL), {
  requestInit: { headers: { Authorization: `Bearer ${minted.token}` } },
});
out.mcpOtherDirect = await outcome(overMcp(direct, []));

// The namespace endpoint bundles only the connections the token can see.
const bundle = new StreamableHTTPClientTransport(new URL(`/mcp/${namespace}`, user.baseURL), {
  requestInit: { headers: { Authorization: `Bearer ${minted.token}` } },
});
out.namespaceMcp = await overMcp(bundle, [
  [`${own}__echo`, { text: 'mine via the namespace' }],
  [`${other}__echo`, { text: 'theirs via the namespace' }],
]);

process.stdout.write(JSON.stringify(out) + '\n');
