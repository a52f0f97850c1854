// A raw TCP socket dressed as the small part of the WebSocket API that @stomp/stompjs uses
// (readyState, binaryType, onopen/onmessage/onclose/onerror, send, close, terminate), so that
// stompjs can speak STOMP over plain TCP: `webSocketFactory: () => new TcpWebSocket(host, port)`.
//
// TCP has no message boundaries; that is fine, because the stompjs parser is incremental and
// takes frames split across (or packed into) chunks. Every chunk is handed over as an
// ArrayBuffer, exactly like a binary WebSocket message with binaryType 'arraybuffer'.
import net from 'node:net';

export class TcpWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(host, port) {
    this.url = `tcp://${host}:${port}`;
    this.protocol = '';
    this.binaryType = 'arraybuffer';
    this.readyState = TcpWebSocket.CONNECTING;
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    this.bytesReceived = 0;
    this._socket = net.connect({ host, port });
    this._socket.setNoDelay(true);
    this._socket.on('connect', () => {
      this.readyState = TcpWebSocket.OPEN;
      this.onopen?.({ type: 'open' });
    });
    this._socket.on('data', chunk => {
      this.bytesReceived += chunk.length;
      const data = chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.length);
      this.onmessage?.({ type: 'message', data });
    });
    this._socket.on('error', error => {
      this.onerror?.({ type: 'error', message: String(error) });
    });
    this._socket.on('close', hadError => {
      this.readyState = TcpWebSocket.CLOSED;
      this.onclose?.({ type: 'close', code: hadError ? 1006 : 1000, reason: '', wasClean: !hadError });
    });
  }

  send(data) {
    if (this.readyState !== TcpWebSocket.OPEN) throw new Error('socket is not open');
    if (typeof data === 'string') this._socket.write(data, 'utf8');
    else this._socket.write(Buffer.from(data.buffer ?? data, data.byteOffset ?? 0, data.byteLength));
  }

  close() {
    if (this.readyState >= TcpWebSocket.CLOSING) return;
    this.readyState = TcpWebSocket.CLOSING;
    this._socket.end();
  }

  terminate() {
    this.readyState = TcpWebSocket.CLOSING;
    this._socket.destroy();
  }
}
