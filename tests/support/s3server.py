"""
A real S3-compatible server for tests: moto's server, in a child process,
with signature checking on and a request log.

Run as a program (C{python -m tests.support.s3server}) it serves moto's
S3 (through moto's own WSGI application, on werkzeug's threaded server) on
127.0.0.1 and a free port, with:

  - authentication: every request must carry an AWS Signature Version 4
    (header form) by the access key made at start-up, for region
    C{us-east-1}, checked by L{SigV4Checker} (moto's own checking, with
    C{INITIAL_NO_AUTH_ACTION_COUNT}, rebuilds the canonical request from a
    re-quoted url, so it refuses keys that need percent-encoding, and it
    refuses git-annex's signatures, which leave the port out of the
    C{Host} header): an unsigned request is refused (C{AccessDenied}),
    another key too (C{InvalidAccessKeyId}), a wrong secret or a tampered
    request (C{SignatureDoesNotMatch}), a signature for another region
    (C{AuthorizationHeaderMalformed}); payload hashes are not checked;
  - multipart parts down to L{MIN_PART_SIZE} bytes;
  - a request log: method, raw path and query, C{Range}, status, the
    C{Authorization} and C{x-amz-content-sha256} headers, and the bytes of
    the request body read and of the response body served, per request
    (logged as it starts, updated as it goes; C{done} once answered);
  - fault injection: the next N requests matching a method (and a
    substring of the path) get an S3 error answer instead.

It prints one JSON line when it is ready: C{{"port": P, "accessKey": ...,
"secretKey": ...}}.  Control requests (unsigned, on C{/_annexd/...}):

  - C{GET /_annexd/log}: the log as JSON (a list of entries); C{?clear=1}
    empties it after reading;
  - C{POST /_annexd/fault} with JSON C{{"method": "PUT", "path": "", "count":
    1, "status": 503, "code": "SlowDown"}}.

L{S3Server} starts and stops that program (its pid is killed, nothing
else) and reads the log.
"""

import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from urllib.parse import quote, unquote

#: The smallest part of a multipart upload the server accepts (S3's is
#: 5 MiB; small here, so that tests use small data).
MIN_PART_SIZE = 65536


class _Logged:
    """
    The response iterable of one request: counts what is served, and logs
    the request when it is closed.
    """

    def __init__(self, app, entry, iterable):
        self.app = app
        self.entry = entry
        self.iterable = iterable

    def __iter__(self):
        try:
            for data in self.iterable:
                self.entry["sent"] += len(data)
                yield data
        except BaseException as e:
            self.entry["error"] = repr(e)
            raise

    def close(self):
        close = getattr(self.iterable, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self.app._done(self.entry)


class _CountingInput:
    def __init__(self, stream, entry):
        self.stream = stream
        self.entry = entry

    def read(self, *args):
        try:
            data = self.stream.read(*args)
        except BaseException as e:
            self.entry["inputError"] = repr(e)
            raise
        self.entry["received"] += len(data)
        return data

    def readline(self, *args):
        data = self.stream.readline(*args)
        self.entry["received"] += len(data)
        return data

    def __iter__(self):
        for line in self.stream:
            self.entry["received"] += len(line)
            yield line


class CountingApp:
    """
    WSGI middleware in front of moto: the request log and faults.
    """

    def __init__(self, app, checker=None):
        self.app = app
        self.checker = checker
        self.lock = threading.Lock()
        self.log = []
        self.faults = []
        self.serial = 0

    def _done(self, entry):
        entry["done"] = True

    def _control(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        if path == "/_annexd/log":
            with self.lock:
                body = json.dumps(self.log).encode("utf-8")
                if "clear=1" in query:
                    self.log = []
        elif path == "/_annexd/fault":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            fault = json.loads(environ["wsgi.input"].read(length))
            fault.setdefault("path", "")
            fault.setdefault("count", 1)
            fault.setdefault("status", 503)
            fault.setdefault("code", "SlowDown")
            with self.lock:
                self.faults.append(fault)
            body = b"{}"
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    def _fault(self, method, raw):
        with self.lock:
            for fault in self.faults:
                if fault["count"] > 0 and fault["method"] == method \
                        and fault["path"] in raw:
                    fault["count"] -= 1
                    return fault
        return None

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/_annexd/"):
            return self._control(environ, start_response)
        method = environ.get("REQUEST_METHOD", "")
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or (
            environ.get("PATH_INFO", "") + (
                "?" + environ["QUERY_STRING"]
                if environ.get("QUERY_STRING") else ""))
        with self.lock:
            self.serial += 1
            serial = self.serial
        entry = {"serial": serial, "method": method, "uri": raw,
                 "range": environ.get("HTTP_RANGE"), "status": None,
                 "sent": 0, "received": 0, "done": False,
                 "authorization": environ.get("HTTP_AUTHORIZATION", ""),
                 "payload": environ.get("HTTP_X_AMZ_CONTENT_SHA256")}
        with self.lock:
            # Logged from the start (so that a request in progress, or one
            # that never ends, is seen); updated as it goes.
            self.log.append(entry)
        refusal = None
        if self.checker is not None:
            refusal = self.checker.check(environ, raw)
        entry["hostWithoutPort"] = environ.get("annexd.hostWithoutPort",
                                               False)
        fault = self._fault(method, raw) if refusal is None else None
        if fault is not None:
            refusal = (fault["status"], fault["code"], "injected fault")
            entry["fault"] = True
        if refusal is not None:
            status, code, message = refusal
            entry["refused"] = code
            if "annexd.canonical" in environ:
                entry["canonical"] = environ["annexd.canonical"]
            body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>"
                    "<Code>%s</Code><Message>%s</Message>"
                    "</Error>" % (code, message)).encode("utf-8")
            entry["status"] = status
            status = "%d %s" % (status, code)
            if method == "HEAD":
                body = b""
            stream = environ.get("wsgi.input")
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if stream is not None and length:
                # Read the body, so that the client sees the answer.
                while length > 0:
                    data = stream.read(min(length, 65536))
                    if not data:
                        break
                    length -= len(data)
            start_response(status, [("Content-Type", "application/xml"),
                                    ("Content-Length", str(len(body)))])
            return _Logged(self, entry, [body])
        if "wsgi.input" in environ:
            environ["wsgi.input"] = _CountingInput(environ["wsgi.input"],
                                                   entry)

        def recording(status, headers, exc_info=None):
            entry["status"] = int(status.split(None, 1)[0])
            return start_response(status, headers, exc_info)
        try:
            result = self.app(environ, recording)
        except BaseException as e:
            entry["error"] = repr(e)
            self._done(entry)
            raise
        return _Logged(self, entry, result)


class SigV4Checker:
    """
    Checks the AWS Signature Version 4 of requests the way S3 does
    (header authentication only), independently of the clients' code:
    the canonical request is rebuilt from the raw request line and
    headers.

    @ivar keys: access key -> secret.
    @ivar region: the region the server is in (a request signed for
        another is refused, as S3 refuses it).
    """

    def __init__(self, keys, region="us-east-1"):
        self.keys = dict(keys)
        self.region = region

    def canonicalQuery(self, query):
        pairs = []
        for part in query.split("&") if query else ():
            if not part:
                continue
            name, _, value = part.partition("=")
            pairs.append((quote(unquote(name), safe="-_.~"),
                          quote(unquote(value), safe="-_.~")))
        return "&".join("%s=%s" % pair for pair in sorted(pairs))

    @staticmethod
    def _header(environ, name):
        if name == "content-type":
            value = environ.get("CONTENT_TYPE")
        elif name == "content-length":
            value = environ.get("CONTENT_LENGTH")
        else:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value is None:
            return None
        return " ".join(value.split())

    def check(self, environ, rawUri):
        """
        @return: L{None} if the request is correctly signed, else
            C{(status, code, message)}.
        """
        auth = environ.get("HTTP_AUTHORIZATION")
        if not auth:
            return (403, "AccessDenied", "Access Denied")
        match = re.match(
            r"AWS4-HMAC-SHA256 Credential=([^/,]+)/([0-9]{8})/([^/,]+)/"
            r"([^/,]+)/aws4_request,\s*SignedHeaders=([^,\s]+),\s*"
            r"Signature=([0-9a-f]{64})$", auth)
        if match is None:
            return (400, "AuthorizationHeaderMalformed",
                    "The authorization header is malformed")
        access, date, region, service, signed, signature = match.groups()
        secret = self.keys.get(access)
        if secret is None:
            return (403, "InvalidAccessKeyId", "The AWS Access Key Id you "
                    "provided does not exist in our records.")
        if region != self.region:
            return (400, "AuthorizationHeaderMalformed",
                    "the region '%s' is wrong; expecting '%s'" % (
                        region, self.region))
        amzDate = environ.get("HTTP_X_AMZ_DATE")
        payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256")
        if not amzDate or not payload or not amzDate.startswith(date):
            return (400, "InvalidRequest", "missing x-amz-date or "
                    "x-amz-content-sha256")
        path, _, query = rawUri.partition("?")
        names = signed.split(";")
        if "host" not in names:
            return (400, "AuthorizationHeaderMalformed", "host not signed")
        lines = []
        for name in names:
            value = self._header(environ, name)
            if value is None:
                return (400, "AuthorizationHeaderMalformed",
                        "signed header %s missing" % (name,))
            lines.append("%s:%s\n" % (name, value))
        canonical = "\n".join([
            environ["REQUEST_METHOD"],
            quote(unquote(path), safe="/-_.~"),
            self.canonicalQuery(query),
            "".join(lines),
            signed,
            payload])
        scope = "%s/%s/%s/aws4_request" % (date, region, service)
        key = ("AWS4" + secret).encode("utf-8")
        for part in (date, region, service, "aws4_request"):
            key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()

        def signatureOf(canonical):
            toSign = "\n".join([
                "AWS4-HMAC-SHA256", amzDate, scope,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
            return hmac.new(key, toSign.encode("utf-8"),
                            hashlib.sha256).hexdigest()
        if hmac.compare_digest(signatureOf(canonical), signature):
            return None
        # git-annex's aws library signs the Host header without its port
        # (it signs its endpoint setting): S3 itself is on the default
        # ports, where that is the same thing.  Accepted, and noted.
        host = self._header(environ, "host") or ""
        if ":" in host and not host.endswith("]"):
            bare = canonical.replace("\nhost:%s\n" % (host,),
                                     "\nhost:%s\n" % (host.rsplit(":", 1)[0],))
            if hmac.compare_digest(signatureOf(bare), signature):
                environ["annexd.hostWithoutPort"] = True
                return None
        environ["annexd.canonical"] = canonical
        return (403, "SignatureDoesNotMatch", "The request signature we "
                "calculated does not match the signature you provided. "
                "Check your key and signing method.")


def _watchParent():
    """
    Exit when stdin closes: the parent (the test process) is gone.
    """
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    auth = "--no-auth" not in argv
    threading.Thread(target=_watchParent, daemon=True).start()
    # Before moto is imported: its settings are read at import time.
    os.environ.setdefault("S3_UPLOAD_PART_MIN_SIZE", str(MIN_PART_SIZE))
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Handler(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_request(self, *args, **kw):
            pass

    app = DomainDispatcherApplication(create_backend_app)
    access = "AKIA" + secrets.token_hex(8).upper()
    secret = secrets.token_urlsafe(30)
    checker = SigV4Checker({access: secret}) if auth else None
    server = make_server("127.0.0.1", 0, CountingApp(app, checker),
                         threaded=True, request_handler=Handler)
    sys.stdout.write(json.dumps({"port": server.server_port,
                                 "accessKey": access,
                                 "secretKey": secret}) + "\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    server.serve_forever()


class S3Server:
    """
    The program above as a child process.

    @ivar port: its port on 127.0.0.1.
    @ivar accessKey: the access key that it accepts.
    @ivar secretKey: its secret.
    @ivar pid: the child's pid.
    """

    def __init__(self, env=None, auth=True):
        self.env = dict(os.environ if env is None else env)
        self.auth = auth
        self.process = None
        self.port = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % (self.port,)

    @property
    def pid(self):
        return None if self.process is None else self.process.pid

    def start(self, timeout=60):
        """
        Start the server and wait until it serves (blocking).
        """
        root = os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.s3server"]
            + ([] if self.auth else ["--no-auth"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            cwd=root)
        line = self._readline(timeout)
        info = json.loads(line)
        self.port = info["port"]
        self.accessKey = info["accessKey"]
        self.secretKey = info["secretKey"]
        return self

    def _readline(self, timeout):
        result = []

        def read():
            result.append(self.process.stdout.readline())
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.stop()
            raise RuntimeError("the S3 test server did not start")
        return result[0]

    def stop(self):
        """
        Kill the child (by its pid) and wait for it.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    # -- control ------------------------------------------------------------

    def _control(self, path, data=None):
        request = urllib.request.Request(
            self.endpoint + path, data=data,
            method="GET" if data is None else "POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def log(self, clear=False):
        """
        The requests served since the last clear, oldest first.
        """
        return self._control("/_annexd/log" + ("?clear=1" if clear else ""))

    def clearLog(self):
        self.log(clear=True)

    def fault(self, method, path="", count=1, status=503, code="SlowDown"):
        """
        Answer the next C{count} C{method} requests whose raw uri contains
        C{path} with C{status} and the S3 error C{code}.
        """
        self._control("/_annexd/fault", json.dumps({
            "method": method, "path": path, "count": count,
            "status": status, "code": code}).encode("utf-8"))

    def waitForLog(self, predicate, timeout=10):
        """
        The log once C{predicate(log)} is true (requests are logged when
        their answer is complete, a moment after the client has it).
        """
        deadline = time.monotonic() + timeout
        while True:
            entries = self.log()
            if predicate(entries) or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)


if __name__ == "__main__":
    main()
