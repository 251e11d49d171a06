// The Node Socket.IO 4 peer of the heroes round-trip scenario: the tutorial's app, idiomatic.
// A client connects with auth {username, password}; `get_name` {hero} is answered to that
// client only with `name` {hero_name} (or `error`). Started by the load harness; binds
// 127.0.0.1 on an ephemeral port and prints `listening on http://ADDR`.
import http from 'node:http';
import { Server } from 'socket.io';

const HEROES = {
  ironMan: 'Tony Stark',
  hulk: 'Bruce Banner',
  wonderWoman: 'Diana Prince',
  batMan: 'Bruce Wayne',
  blackPanther: "T'Challa",
};
const USERS = { bench: 'bench' };

const server = http.createServer();
const io = new Server(server, { maxHttpBufferSize: 2048 });
io.use((socket, next) => {
  const { username, password } = socket.handshake.auth ?? {};
  if (typeof username === 'string' && USERS[username] === password) next();
  else next(new Error('invalid credentials'));
});
io.on('connection', (socket) => {
  socket.on('get_name', (request) => {
    const name = HEROES[request?.hero];
    if (name) socket.emit('name', { hero_name: name });
    else socket.emit('error', { error: 'unknown hero' });
  });
});
server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
});
