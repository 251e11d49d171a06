# A raw WebSocket client for benches/instructions/run: echoes N binary messages of SIZE bytes.
import socket, sys, os, base64, struct
host, port = sys.argv[1].split(':'); token = sys.argv[2]; n = int(sys.argv[3]); size = int(sys.argv[4])
s = socket.create_connection((host, int(port)))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
key = base64.b64encode(os.urandom(16)).decode()
req = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://bench.wsguard.test\r\n")
if token != '-': req += f"Authorization: Bearer {token}\r\n"
s.sendall((req + "\r\n").encode())
buf = b''
while b'\r\n\r\n' not in buf: buf += s.recv(4096)
assert b' 101 ' in buf.split(b'\r\n')[0], buf
buf = buf.split(b'\r\n\r\n', 1)[1]
payload = os.urandom(size); mask = b'\x01\x02\x03\x04'
masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
if size < 126: hdr = struct.pack('!BB', 0x82, 0x80 | size)
else: hdr = struct.pack('!BBH', 0x82, 0x80 | 126, size)
frame = hdr + mask + masked
want = 2 + (2 if size >= 126 else 0) + size
for _ in range(n):
    s.sendall(frame)
    while len(buf) < want: buf += s.recv(65536)
    buf = buf[want:]
s.sendall(b'\x88\x82' + mask + bytes([0x03 ^ 1, 0xe8 ^ 2]))
s.recv(100); s.close()
