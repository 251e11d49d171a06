// The Node `ws` peer of the fan-out scenario: an idiomatic broadcast server. `POST /prices`
// ({"symbol","price"}) makes an update, serialised once and `send` to every open client, in the
// stock ticker's JSON shape. Started by the load harness; binds 127.0.0.1 on an ephemeral port
// and prints `listening on http://ADDR`.
import http from 'node:http';
import { WebSocketServer, WebSocket } from 'ws';

const SYMBOLS = new Set(['AAPL', 'MSFT', 'GOOG', 'AMZN', 'NVDA', 'TSLA', 'SAP', 'ASML']);
const MAX_BODY = 4096;
let seq = 0;

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/prices') {
    res.writeHead(404).end();
    return;
  }
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => {
    body += chunk;
    if (body.length > MAX_BODY) req.destroy();
  });
  req.on('end', () => {
    let update;
    try {
      update = JSON.parse(body);
    } catch {
      res.writeHead(400).end();
      return;
    }
    if (!SYMBOLS.has(update.symbol) || typeof update.price !== 'number') {
      res.writeHead(400).end();
      return;
    }
    seq += 1;
    const json = JSON.stringify({ type: 'price', symbol: update.symbol, price: update.price, seq, ts: Date.now() });
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(json);
    }
    res.writeHead(200, { 'content-length': '0' }).end();
  });
});
const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });
wss.on('connection', (socket) => socket.on('error', () => socket.terminate()));
server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
});
