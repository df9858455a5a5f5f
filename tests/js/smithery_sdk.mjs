// Drives a Smithery Connect-compatible server with the official `@smithery/api` SDK and, through
// `createConnection()` from `@smithery/api/mcp`, with the official MCP TypeScript client.
//
// usage: node --import ./fence.mjs smithery_sdk.mjs '{"namespace": "...", "modernUrl": "...", "dottedUrl": "..."}'
// env:   SMITHERY_API_KEY, SMITHERY_BASE_URL, SMITHERY_CONNECT_BASE_URL (read by the SDK itself);
//        JUNCTION_NODE_PREFIX: the npm prefix holding the packages (default ../.node);
//        JUNCTION_REQUEST_LOG: where fence.mjs logs each request.
// Prints one JSON object of results on stdout; any unexpected error goes to stderr with exit 1.
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const prefix = process.env.JUNCTION_NODE_PREFIX ?? join(dirname(fileURLToPath(import.meta.url)), '..', '.node');
const { load } = await import(pathToFileURL(join(prefix, 'load.mjs')).href);
const { default: Smithery, NotFoundError, ConflictError } = await load('@smithery/api');
const { createConnection } = await load('@smithery/api/mcp');
const { Client } = await load('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = await load('@modelcontextprotocol/sdk/client/streamableHttp.js');

const input = JSON.parse(process.argv[2] ?? '{}');
const { namespace, modernUrl, dottedUrl } = input;
if (!namespace || !modernUrl || !dottedUrl) throw new Error('need namespace, modernUrl and dottedUrl');

// fence.mjs keeps every request on the gateway and logs it; refuse to run without it.
if (globalThis.fetch.name !== 'fencedFetch') throw new Error('run with: node --import ./fence.mjs smithery_sdk.mjs');

// An expected API error, as data: which class the SDK raised and what the server sent.
async function apiError(promise) {
  try {
    const value = await promise;
    return { ok: true, value };
  } catch (e) {
    if (e?.status === undefined) throw e;
    return {
      ok: false,
      class: e.constructor.name,
      status: e.status,
      body: e.error ?? null,
      message: e.message,
      shouldRetry: e.headers?.get?.('x-should-retry') ?? null,
      isNotFound: e instanceof NotFoundError,
      isConflict: e instanceof ConflictError,
    };
  }
}

const client = new Smithery();
const out = { baseURL: client.baseURL, connectBaseURL: client.connectBaseURL };

out.health = await client.health.check();

// Namespaces: the first page as createConnection() reads it, then auto-pagination, which stops
// at the first empty page.
out.namespacesFirstPage = (await client.namespaces.list()).namespaces.map((n) => n.name);
out.namespacesAll = [];
for await (const n of client.namespaces.list({ pageSize: 1 })) out.namespacesAll.push(n.name);

// PUT /{ns}/{id} with a caller-chosen id, then POST /{ns} with a generated one.
out.set = await client.connections.set('sdk-dotted', {
  namespace,
  mcpUrl: dottedUrl,
  name: 'Dotted tools',
  metadata: { userId: 'u2', team: 'core' },
});
out.setAgain = await client.connections.set('sdk-dotted', { namespace, name: 'Dotted tools (renamed)' });
out.created = await client.connections.create(namespace, { mcpUrl: modernUrl, metadata: { userId: 'u1' } });
const modernId = out.created.connectionId;

// GET /{ns} with the SDK's query forms: metadata[userId]=u1, name=, mcpUrl=, limit/cursor.
const ids = (page) => page.connections.map((c) => c.connectionId).sort();
out.listAll = ids(await client.connections.list(namespace));
out.listU1 = ids(await client.connections.list(namespace, { metadata: { userId: 'u1' } }));
out.listU2Core = ids(await client.connections.list(namespace, { metadata: { userId: 'u2', team: 'core' } }));
out.listNobody = ids(await client.connections.list(namespace, { metadata: { userId: 'nobody' } }));
out.listByName = ids(await client.connections.list(namespace, { name: 'Dotted tools (renamed)' }));
out.listByMcpUrl = ids(await client.connections.list(namespace, { mcpUrl: modernUrl }));
out.pages = [];
let cursor;
for (let i = 0; i < 10; i++) {
  const page = await client.connections.list(namespace, { limit: 1, ...(cursor ? { cursor } : {}) });
  out.pages.push({ ids: ids(page), nextCursor: page.nextCursor ?? null });
  cursor = page.nextCursor;
  if (!cursor) break;
}

out.get = await client.connections.get(modernId, { namespace });
out.getMissing = await apiError(client.connections.get('no-such-connection', { namespace }));
out.conflict = await apiError(client.connections.set('sdk-dotted', { namespace, mcpUrl: modernUrl }));

// REST tools.
const onModern = { namespace, connectionId: modernId };
const onDotted = { namespace, connectionId: 'sdk-dotted' };
out.toolsModern = (await client.connections.tools.list(modernId, { namespace })).tools.map((t) => t.name).sort();
out.toolsDotted = (await client.connections.tools.list('sdk-dotted', { namespace })).tools.map((t) => t.name).sort();
out.callEcho = await client.connections.tools.call('echo', { ...onModern, body: { text: 'hello from the sdk' } });
out.callAdd = await client.connections.tools.call('add', { ...onModern, body: { a: 2, b: 40 } });
out.callFail = await apiError(client.connections.tools.call('fail', { ...onModern, body: {} }));
out.callDotted = await client.connections.tools.call('repo.search', { ...onDotted, body: { query: 'junction' } });
out.getToolDotted = await client.connections.tools.get('repo.search', onDotted);
out.callUnderscore = await client.connections.tools.call('repo_search', { ...onDotted, body: { query: 'junction' } });
out.getToolCategory = await client.connections.tools.get('issues', onDotted);
out.getToolRepo = await client.connections.tools.get('repo', onDotted);
out.getToolMissing = await apiError(client.connections.tools.get('nope', onModern));

// MCP with the official client over a transport; lists tools and makes `calls`.
async function overMcp(transport, calls) {
  const mcp = new Client({ name: 'junction-sdk-test', version: '1.0.0' }, { capabilities: {} });
  await mcp.connect(transport);
  const result = { serverVersion: mcp.getServerVersion() ?? null, sessionId: transport.sessionId ?? null };
  result.tools = (await mcp.listTools()).tools.map((t) => t.name).sort();
  result.calls = {};
  for (const [name, args] of calls) result.calls[name] = await mcp.callTool({ name, arguments: args });
  // A stateless server answers DELETE with 405, which the MCP SDK treats as success.
  await transport.terminateSession();
  await mcp.close();
  return result;
}

// createConnection(): an existing connection (no handshake, the default), then one it creates
// with PUT after a 404, with the initialize handshake.
let conn = await createConnection({ client, namespace, connectionId: modernId });
out.mcpExisting = {
  connectionId: conn.connectionId,
  url: conn.url,
  ...(await overMcp(conn.transport, [
    ['echo', { text: 'hello over mcp' }],
    ['add', { a: 1, b: 2 }],
    ['fail', {}],
  ])),
};
conn = await createConnection({ client, namespace, connectionId: 'sdk-mcp-created', mcpUrl: dottedUrl, handshake: true });
out.mcpCreated = {
  connectionId: conn.connectionId,
  url: conn.url,
  ...(await overMcp(conn.transport, [['repo.search', { query: 'over mcp' }]])),
};

// The namespace endpoint (Smithery's mcp.smithery.run/{namespace}), with the handshake: every
// connection's tools, named <connectionId>.<tool>.
const nsTransport = new StreamableHTTPClientTransport(new URL(`/mcp/${namespace}`, client.baseURL), {
  requestInit: { headers: { Authorization: `Bearer ${client.apiKey}` } },
});
out.namespaceMcp = await overMcp(nsTransport, [
  [`${modernId}.echo`, { text: 'via the namespace' }],
  ['sdk-dotted.repo.search', { query: 'via the namespace' }],
]);

// DELETE, then the connection is gone.
out.deleted = {};
for (const id of [modernId, 'sdk-dotted', 'sdk-mcp-created']) {
  out.deleted[id] = await client.connections.delete(id, { namespace });
}
out.afterDelete = await apiError(client.connections.get(modernId, { namespace }));
out.listAfterDelete = ids(await client.connections.list(namespace));

process.stdout.write(JSON.stringify(out) + '\n');
