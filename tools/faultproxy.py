"""A loopback TCP proxy that injects network faults, for tests and benchmarks.

Modes (switch at any time with `set`; new and open connections follow the new mode):
- pass                      forward both ways
- latency, ms=N             delay every forwarded piece by N ms in each direction (RTT 2N)
- reset_after, nbytes=N     forward N bytes server->client, then reset both sides
- blackhole                 accept, then forward nothing in either direction
- drip, bytes_per_s=N       forward server->client N bytes per second
- refuse                    close every new connection at once

    proxy = FaultProxy("127.0.0.1", target_port); port = proxy.start_in_thread()
    proxy.set(mode="latency", ms=25); ...; proxy.stop()

CLI: python -m tools.faultproxy TARGET_PORT [--listen PORT] [--mode M] [--ms N] ...
"""
import argparse
import asyncio
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_host, target_port, listen_port=0):
        self.target = (target_host, target_port)
        self.listen_port = listen_port
        self.mode = {"mode": "pass"}
        self.connections = 0
        self._server = None
        self._loop = None
        self._thread = None
        self._writers: set = set()

    def set(self, mode="pass", **params):
        self.mode = dict(params, mode=mode)

    async def start(self):
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        return self.listen_port

    def start_in_thread(self):
        ready = threading.Event()

        def run():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.listen_port

    def drop(self):
        """Reset every open connection now (a cut that kept-alive connections feel too;
        `set` alone changes only what flows next)."""
        def reset_all():
            for w in list(self._writers):
                _reset(w)

        self._loop.call_soon_threadsafe(reset_all)

    def stop(self):
        loop = self._loop
        if loop is None:
            return

        def close():
            self._server.close()
            for w in list(self._writers):
                w.close()
            loop.stop()

        if self._thread is not None:
            loop.call_soon_threadsafe(close)
            self._thread.join(5)
        else:
            self._server.close()

    async def _client(self, creader, cwriter):
        self.connections += 1
        if self.mode["mode"] == "refuse":
            _reset(cwriter)
            return
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(cwriter)
            return
        self._writers.update((cwriter, swriter))
        budget = [self.mode.get("nbytes", 0)]
        up = asyncio.ensure_future(self._pipe(creader, swriter, False, budget, cwriter))
        down = asyncio.ensure_future(self._pipe(sreader, cwriter, True, budget, swriter))
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        for w in (cwriter, swriter):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader, writer, downstream, budget, other):
        while True:
            data = await reader.read(4096)
            if not data:
                return
            mode = self.mode
            m = mode["mode"]
            if m == "blackhole":
                continue
            if m == "latency":
                await asyncio.sleep(mode.get("ms", 0) / 1000)
            if m == "reset_after" and downstream:
                left = budget[0]
                if len(data) >= left:
                    writer.write(data[:left])
                    await writer.drain()
                    _reset(writer)
                    _reset(other)
                    return
                budget[0] -= len(data)
            if m == "drip" and downstream:
                rate = max(1, mode.get("bytes_per_s", 100))
                for i in range(0, len(data), max(1, rate // 10)):
                    writer.write(data[i:i + max(1, rate // 10)])
                    await writer.drain()
                    await asyncio.sleep(0.1)
                continue
            writer.write(data)
            await writer.drain()


def _reset(writer):
    """Close with RST (SO_LINGER 0), like a middlebox dropping the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("target_port", type=int)
    ap.add_argument("--target-host", default="127.0.0.1")
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--mode", default="pass")
    ap.add_argument("--ms", type=int, default=0)
    ap.add_argument("--nbytes", type=int, default=0)
    ap.add_argument("--bytes-per-s", type=int, default=100)
    a = ap.parse_args()
    proxy = FaultProxy(a.target_host, a.target_port, a.listen)
    proxy.set(a.mode, ms=a.ms, nbytes=a.nbytes, bytes_per_s=a.bytes_per_s)

    async def run():
        port = await proxy.start()
        print("faultproxy 127.0.0.1:%d -> %s:%d (%s)" % (port, a.target_host, a.target_port,
                                                        a.mode), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
