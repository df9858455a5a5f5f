// Preload (`node --import ./fence.mjs ...`) for Smithery's npm clients under test.
//
// Wraps the global fetch, which both `@smithery/api` and the MCP SDK use, so that
//  - a request to any origin other than SMITHERY_BASE_URL's is refused: nothing reaches
//    smithery.ai / smithery.run by accident, and a call the client routes elsewhere fails loudly;
//  - each request is appended as one JSON line {method, path, sessionId, status} to the file
//    named by JUNCTION_REQUEST_LOG (if set), so tests can check what went over the wire.
import { appendFileSync } from 'node:fs';

const base = process.env.SMITHERY_BASE_URL;
if (!base) throw new Error('fence.mjs: SMITHERY_BASE_URL is not set');
const origin = new URL(base).origin;
const logFile = process.env.JUNCTION_REQUEST_LOG;
const realFetch = globalThis.fetch;

globalThis.fetch = async function fencedFetch(resource, init) {
  const request = new Request(resource, init);
  const url = new URL(request.url);
  if (url.origin !== origin) {
    throw new Error(`fence: refused ${request.method} ${request.url}: only ${origin} (the gateway) is allowed`);
  }
  const entry = {
    method: request.method,
    path: url.pathname + url.search,
    sessionId: request.headers.get('mcp-session-id'),
    status: null,
  };
  try {
    const response = await realFetch(resource, init);
    entry.status = response.status;
    return response;
  } finally {
    if (logFile) appendFileSync(logFile, JSON.stringify(entry) + '\n');
  }
};
