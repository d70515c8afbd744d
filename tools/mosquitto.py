"""A real Mosquitto 2 broker for tests and the local clouds (never a production setup).

Owns one broker process in a work directory: loopback listeners on free ports (plain, plus TLS
when test certificates are given), `allow_anonymous false`, and either the dynamic-security
plugin (default; an admin client with a random password that may do everything) or a password
file. Clients are managed over `$CONTROL/dynamic-security/v1` with a short paho admin
connection per call, so no password ever appears on a command line.

    with Broker(workdir, certs=make_certs(d)).start() as b:
        b.add_client("dev", "pw", client_id="dev1", publish=["t/up"], subscribe=["t/down/#"])

Default ACL access is deny for publish, subscribe and receive, so an ordinary client may only
do what its role allows. Each added client gets its own role `role-<username>` with
publishClientSend for `publish` and subscribePattern + publishClientReceive for `subscribe`.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_CTRL = shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"


class BrokerError(RuntimeError):
    """The broker could not start, or a dynsec command failed."""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            # a connect to an unbound ephemeral port can meet itself (TCP simultaneous open)
            return s.getsockname() != s.getpeername()
    except OSError:
        return False


def _die_with_parent():
    """In the child before exec: SIGTERM the broker when the process (strictly: the thread)
    that started it dies, so a SIGKILLed test or cloud never leaves a broker behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _find_plugin():
    if os.path.exists(DYNSEC_PLUGIN):
        return DYNSEC_PLUGIN
    for d in ("/usr/lib", "/usr/local/lib", "/usr/lib64"):
        for root, _dirs, files in os.walk(d):
            if "mosquitto_dynamic_security.so" in files:
                return os.path.join(root, "mosquitto_dynamic_security.so")
    raise BrokerError("mosquitto dynamic-security plugin not found")


class Broker:
    host = "127.0.0.1"

    def __init__(self, workdir, certs=None, dynsec=True, users=None):
        self.workdir = os.path.abspath(workdir)
        self.certs = certs
        self.dynsec = dynsec
        self.users = dict(users or {})
        self.port = None
        self.tls_port = None
        self.admin = ("admin", secrets.token_urlsafe(18)) if dynsec else None
        self.conf_path = os.path.join(self.workdir, "mosquitto.conf")
        self.log_path = os.path.join(self.workdir, "mosquitto.log")
        self.dynsec_path = os.path.join(self.workdir, "dynamic-security.json")
        self.passwd_path = os.path.join(self.workdir, "passwd")
        self.proc = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self):
        """Start on fresh free ports with a fresh dynsec state (admin only) and wait until
        every listener accepts. Call it (and restart) from a thread that outlives the broker:
        the broker gets SIGTERM when that thread ends."""
        if self.proc is not None:
            raise BrokerError("broker already running")
        os.makedirs(self.workdir, exist_ok=True)
        if self.dynsec:  # a new Broker object starts clean: its admin password is new
            self._init_dynsec()
        if not self.dynsec:
            self._write_passwd()
        last = None
        for _ in range(5):
            if self.port is None or last is not None:
                self.port = _free_port()
                self.tls_port = _free_port() if self.certs else None
            try:
                self._launch()
                return self
            except BrokerError as e:
                last = e
        raise last

    def restart(self):
        """Stop and start again on the same ports with the same dynsec state."""
        self.stop()
        last = None
        for _ in range(20):  # the old socket may linger briefly before the port can be bound
            try:
                self._launch()
                return self
            except BrokerError as e:
                last = e
                time.sleep(0.1)
        raise last

    def stop(self):
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "mqtt://%s:%d" % (self.host, self.port)

    @property
    def tls_url(self):
        return "mqtts://%s:%d" % (self.host, self.tls_port) if self.tls_port else None

    def log_tail(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no broker log)"

    def _config(self):
        # set_tcp_nodelay: without it mosquitto's back-to-back packets (PUBACKs, a cloud's
        # acks) wait on Nagle for the peer's delayed ACK, 40 ms stalls on loopback
        # (bench/mqtt-throughput.md)
        lines = ["set_tcp_nodelay true", "per_listener_settings false", "allow_anonymous false",
                 "persistence false",
                 "log_dest file %s" % self.log_path, "log_type all",
                 "log_timestamp_format %Y-%m-%dT%H:%M:%S", "user root"]
        if self.dynsec:
            lines += ["plugin %s" % _find_plugin(), "plugin_opt_config_file %s" % self.dynsec_path]
        else:
            lines.append("password_file %s" % self.passwd_path)
        lines.append("listener %d %s" % (self.port, self.host))
        if self.certs:
            lines += ["listener %d %s" % (self.tls_port, self.host),
                      "cafile %s" % self.certs["ca"], "certfile %s" % self.certs["server_cert"],
                      "keyfile %s" % self.certs["server_key"]]
        return "\n".join(lines) + "\n"

    def _launch(self):
        with open(self.conf_path, "w") as f:
            f.write(self._config())
        with open(self.log_path, "a") as f:
            f.write("---- start %s\n" % time.strftime("%H:%M:%S"))
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        ports = [self.port] + ([self.tls_port] if self.tls_port else [])
        end = time.time() + 10
        while time.time() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                self.proc = None
                raise BrokerError("mosquitto exited (%s):\n%s\n%s"
                                  % (err.strip(), self.log_tail(), ""))
            # listeners may accept before a bad TLS file makes mosquitto exit: wait for both
            if all(_port_open(p) for p in ports) and self._running_logged():
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError("mosquitto did not accept on %s within 10 s:\n%s"
                          % (ports, self.log_tail()))

    def _running_logged(self):
        """True once this launch's log section says the broker finished starting."""
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.read()
        except OSError:
            return False
        return " running" in text[text.rfind("---- start"):]

    def _init_dynsec(self):
        if os.path.exists(self.dynsec_path):
            os.remove(self.dynsec_path)
        r = subprocess.run([MOSQUITTO_CTRL, "dynsec", "init", self.dynsec_path, self.admin[0],
                            self.admin[1]], capture_output=True, text=True)
        if r.returncode != 0:
            raise BrokerError("mosquitto_ctrl dynsec init failed: " + r.stderr + r.stdout)
        with open(self.dynsec_path) as f:
            cfg = json.load(f)
        admin_role = [ro for ro in cfg["roles"] if ro["rolename"] == "admin"][0]
        admin_role["acls"].append({"acltype": "publishClientSend", "topic": "#", "allow": True})
        cfg["defaultACLAccess"] = {"publishClientSend": False, "publishClientReceive": False,
                                   "subscribe": False, "unsubscribe": True}
        with open(self.dynsec_path, "w") as f:
            json.dump(cfg, f, indent=1)

    def _write_passwd(self):
        open(self.passwd_path, "w").close()
        for user, pw in self.users.items():
            r = subprocess.run([MOSQUITTO_PASSWD, "-b", self.passwd_path, user, pw],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise BrokerError("mosquitto_passwd failed: " + r.stderr)

    # -- dynamic security ----------------------------------------------------------------

    def control(self, commands, timeout=5):
        """Send dynsec commands as admin; returns the responses; raises BrokerError on any
        error response."""
        import paho.mqtt.client as mqtt

        if not self.dynsec:
            raise BrokerError("broker runs without dynamic security")
        done = threading.Event()
        box = {}
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ctl-" + uuid.uuid4().hex[:10],
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(*self.admin)

        def on_connect(client, _u, _f, rc, _p):
            if rc.is_failure:
                box["err"] = "admin connect refused: %s" % rc
                done.set()
                return
            client.subscribe(CONTROL_TOPIC + "/response", qos=1)

        def on_subscribe(client, _u, _mid, _rcs, _p):
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)

        def on_message(_c, _u, msg):
            box["resp"] = json.loads(msg.payload)
            done.set()

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        with self._lock:
            try:
                c.connect(self.host, self.port, keepalive=10)
                c.loop_start()
                if not done.wait(timeout):
                    raise BrokerError("no dynsec response within %s s for %s"
                                      % (timeout, [x["command"] for x in commands]))
            finally:
                c.disconnect()
                c.loop_stop()
        if "err" in box:
            raise BrokerError(box["err"])
        responses = box["resp"].get("responses", [])
        errors = [r for r in responses if r.get("error")]
        if errors:
            raise BrokerError("dynsec: %s" % errors)
        return responses

    def add_client(self, username, password, client_id=None, publish=(), subscribe=()):
        role = "role-" + username
        acls = [{"acltype": "publishClientSend", "topic": t, "allow": True} for t in publish]
        for t in subscribe:
            acls.append({"acltype": "subscribePattern", "topic": t, "allow": True})
            acls.append({"acltype": "publishClientReceive", "topic": t, "allow": True})
        client = {"command": "createClient", "username": username, "password": password,
                  "roles": [{"rolename": role}]}
        if client_id:
            client["clientid"] = client_id
        self.control([{"command": "createRole", "rolename": role, "acls": acls}, client])

    def remove_client(self, username):
        """Delete the client and its role; the broker disconnects its live sessions."""
        self.control([{"command": "deleteClient", "username": username},
                      {"command": "deleteRole", "rolename": "role-" + username}])

    def disable_client(self, username):
        self.control([{"command": "disableClient", "username": username}])

    def enable_client(self, username):
        self.control([{"command": "enableClient", "username": username}])

    def kick_client(self, username):
        """Disconnect the client's live sessions but keep it usable: disable and enable in one
        control message, so a quick reconnect never meets the disabled state."""
        self.control([{"command": "disableClient", "username": username},
                      {"command": "enableClient", "username": username}])

    def list_clients(self):
        r = self.control([{"command": "listClients"}])
        return r[0]["data"]["clients"]


class SyncClient:
    """A blocking paho v5 client for tests and tools: each call waits for the broker's answer
    and returns its reason code(s), received messages queue up in `messages`. It does not
    reconnect by itself (two clients with one client id would take the session from each
    other forever); call connect() again."""

    def __init__(self, host, port, username=None, password=None, client_id="",
                 ca=None, clean_start=True, timeout=5, auto_reconnect=False):
        import queue

        import paho.mqtt.client as mqtt

        self.host, self.port, self.timeout = host, port, timeout
        self.client_id = client_id or "t-" + uuid.uuid4().hex[:12]
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, reconnect_on_failure=auto_reconnect)
        if username is not None:
            self.c.username_pw_set(username, password)
        if ca:
            import ssl

            ctx = ssl.create_default_context(cafile=ca)
            self.c.tls_set_context(ctx)
        self.clean_start = clean_start
        self.messages = queue.Queue()
        self.connack = None
        self.disconnect_rc = None
        self._connected = threading.Event()
        self._gone = threading.Event()
        self._acks = {}
        self._events = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_ack
        self.c.on_publish = self._on_pub
        self.c.on_message = lambda _c, _u, m: self.messages.put(m)

    def _event(self, mid):
        return self._events.setdefault(mid, threading.Event())

    def _on_connect(self, _c, _u, _f, rc, _p):
        self.connack = rc
        self._connected.set()

    def _on_disconnect(self, _c, _u, _f, rc, _p):
        self.disconnect_rc = rc
        self._gone.set()
        self._connected.set()

    def _on_ack(self, _c, _u, mid, rcs, _p):
        self._acks[mid] = rcs
        self._event(mid).set()

    def _on_pub(self, _c, _u, mid, rc, _p):
        self._acks[mid] = rc
        self._event(mid).set()

    def connect(self):
        """Returns the CONNACK reason code (paho ReasonCode; `.value` is the number)."""
        import paho.mqtt.client as mqtt

        self._connected.clear()
        self._gone.clear()
        self.c.loop_stop()  # a loop that ended with the last connection
        self.c.connect(self.host, self.port, keepalive=30, clean_start=self.clean_start
                       if self.clean_start is not None else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        self.c.loop_start()
        if not self._connected.wait(self.timeout):
            raise BrokerError("no CONNACK within %s s" % self.timeout)
        return self.connack

    def _wait(self, mid):
        if not self._event(mid).wait(self.timeout):
            raise BrokerError("no ack for mid %s within %s s" % (mid, self.timeout))
        return self._acks.pop(mid)

    def subscribe(self, topic, qos=1):
        """Returns the list of SUBACK reason codes."""
        _rc, mid = self.c.subscribe(topic, qos=qos)
        return self._wait(mid)

    def publish(self, topic, payload, qos=1, retain=False):
        """QoS 1: returns the PUBACK reason code; QoS 0: returns None once sent."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(self.timeout)
            return None
        return self._wait(info.mid)

    def next_message(self, timeout=None):
        """The next received message (paho MQTTMessage), or BrokerError on timeout."""
        import queue

        try:
            return self.messages.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise BrokerError("no message within %s s" % (timeout or self.timeout)) from None

    def wait_disconnected(self, timeout=None):
        """True once the broker closed the session (disconnect_rc holds the reason)."""
        return self._gone.wait(timeout or self.timeout)

    def close(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()
