"""
A real git-annex client using annexd over TLS (annex+https), and a stock
user's fresh C{git clone} of the gateway over git's smart HTTP.

How a test client is made to trust the test CA without touching the system
store (see L{tests.support.tlsca}): git-annex's HTTP client takes its trust
anchors from crypton-x509-system, which reads C{SSL_CERT_FILE}, else
C{SSL_CERT_DIR}, else C{SYSTEM_CERTIFICATE_PATH}, else the system paths
(C{/etc/ssl/certs/} ...).  The first one set replaces the system store.
git itself (libcurl) takes C{GIT_SSL_CAINFO}.  The tests remove all of these
from the base environment, so that an unconfigured client sees only the
system store.
"""

import hashlib
import http.client
import json
import os
import ssl

from twisted.trial import unittest

from tests.support.annex import _text, cluster_for
from tests.support.daemon import freePort, startDaemon
from tests.support.tlsca import makeCA
from tests.test_gateway_http import CLUSTER, REMOTE, HTTPGatewayMixin
from tests.test_gateway_http_auth import (CHALLENGE, credentialHelper,
                                          helperRequests, putRequest)

#: Environment variables that choose the CAs git and git-annex trust.
TRUST_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "SYSTEM_CERTIFICATE_PATH",
                   "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "CURL_CA_BUNDLE")


def sslEndpoint(port, ca, chain=True):
    """
    The Twisted endpoint string of a TLS listener on 127.0.0.1 with
    C{ca}'s server certificate (and its intermediate CA as
    C{extraCertChain}, if it has one and C{chain} is true).
    """
    endpoint = "ssl:%d:interface=127.0.0.1:privateKey=%s:certKey=%s" % (
        port, ca.serverKey, ca.serverCert)
    if chain and ca.chain is not None:
        endpoint += ":extraCertChain=%s" % (ca.chain,)
    return endpoint


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class TLSGatewayMixin(HTTPGatewayMixin):
    """
    A cluster and a test CA; annexd started with the listeners a test asks
    for.  The base environment trusts only the system store.
    """

    def setUpTLS(self):
        self.cluster = cluster_for(self)
        for name in TRUST_VARIABLES:
            self.cluster.env.env.pop(name, None)
        self.ca = makeCA(self.mktemp())

    def startTLS(self, options=("--wideopen",), plainPort=None, env=None,
                 chain=True):
        """
        Start annexd with a TLS listener (and a plain one on C{plainPort}
        when given).

        @return: the TLS port.
        """
        port = freePort()
        args = ["--repo", self.cluster.gateway.path, *options,
                "--http", sslEndpoint(port, self.ca, chain)]
        if plainPort is not None:
            args += ["--http", "tcp:%d:interface=127.0.0.1" % (plainPort,)]
        self.daemon = startDaemon(self, dict(self.cluster.env.env, **(
            env or {})), args, port=port)
        return port

    def assertOnNodes(self, key, digest, nodes):
        for node in self.cluster.nodes:
            expected = digest if node.name in nodes else None
            self.assertEqual(self.cluster.node_sha256(node, key), expected,
                             "%s on %s" % (key, node.name))

    def served(self, what):
        """
        How many requests whose log line holds C{what} annexd logged.
        """
        return sum(what in line for line in self.daemon.output().splitlines())


class ClientOverHTTPSTests(TLSGatewayMixin, unittest.TestCase):
    """
    copy and get over annex+https, with a client that trusts the test CA
    and with clients that do not.
    """

    def setUp(self):
        self.setUpTLS()
        self.port = self.startTLS()
        self.useHTTP(self.daemon.annexUrl("annex+https"))

    def test_copyAndGet(self):
        """
        With the test CA trusted, copy --to the cluster stores files on
        every node (checksums on the nodes), and get --from the cluster
        brings them back intact, all through annexd's TLS listener.
        """
        trust = self.ca.clientEnv()
        files = {name: self.writeFile(name, size)
                 for name, size in (("small", 1000), ("mib", 1 << 20))}
        self.client("copy", "--to", CLUSTER, *files, env=trust)
        everyNode = {n.name for n in self.cluster.nodes}
        for key, digest in files.values():
            self.assertOnNodes(key, digest, everyNode)
        self.assertEqual(self.served("/v4/put?"), len(files))
        self.client("drop", "--force", *files)
        self.client("get", "--from", CLUSTER, *files, env=trust)
        for name, (key, digest) in files.items():
            self.assertEqual(
                sha256(os.path.join(self.cluster.client.path, name)), digest)
        self.assertEqual(self.served("/v4/key/"), len(files))

    def test_eachTrustVariable(self):
        """
        git-annex trusts the test CA given by any one of C{SSL_CERT_FILE}
        (a file), C{SSL_CERT_DIR} (a directory) or
        C{SYSTEM_CERTIFICATE_PATH} (a directory or a file).
        """
        key, digest = self.writeFile("t.bin", 2000)
        for name, value in (("SSL_CERT_FILE", self.ca.caCert),
                            ("SSL_CERT_DIR", self.ca.cadir),
                            ("SYSTEM_CERTIFICATE_PATH", self.ca.cadir),
                            ("SYSTEM_CERTIFICATE_PATH", self.ca.caCert)):
            self.client("copy", "--to", CLUSTER, "t.bin", env={name: value})
            self.assertOnNodes(key, digest,
                               {n.name for n in self.cluster.nodes})
            self.client("drop", "--from", CLUSTER, "t.bin",
                        env={name: value})
            self.assertOnNodes(key, digest, set())

    def test_untrustedCA(self):
        """
        A client that trusts only the system store, or only another CA,
        refuses the server's certificate (TLS handshake failure: "unknown
        CA", or for another CA with the same name "certificate rejected")
        and the copy fails; nothing reaches the nodes (annexd serves no
        request).
        """
        key, digest = self.writeFile("u.bin", 3000)
        other = makeCA(self.mktemp())
        for env in (None, other.clientEnv()):
            result = self.client("copy", "--to", CLUSTER, "u.bin",
                                 check=False, env=env)
            output = _text(result.stdout) + _text(result.stderr)
            self.assertNotEqual(result.returncode, 0, output)
            self.assertIn("HandshakeFailed", output)
            self.assertTrue("unknown CA" in output
                            or "certificate rejected" in output, output)
            self.assertOnNodes(key, digest, set())
        self.assertEqual(self.served('"POST /'), 0)
        self.assertEqual(self.served('"GET /'), 0)


class IntermediateCATests(TLSGatewayMixin, unittest.TestCase):
    """
    A server certificate signed by an intermediate CA: the client trusts
    only the root, so annexd must send the intermediate
    (C{extraCertChain=} in the ssl: endpoint string).
    """

    def setUp(self):
        self.setUpTLS()
        self.ca = makeCA(self.mktemp(), intermediate=True)

    def test_extraCertChain(self):
        """
        With C{extraCertChain=chain.pem} the copy over annex+https stores
        on every node; without it the client cannot build the chain and
        the copy fails, storing nothing.
        """
        trust = self.ca.clientEnv()
        key, digest = self.writeFile("chain.bin", 4000)
        self.startTLS(chain=False)
        self.useHTTP(self.daemon.annexUrl("annex+https"))
        result = self.client("copy", "--to", CLUSTER, "chain.bin",
                             check=False, env=trust)
        output = _text(result.stdout) + _text(result.stderr)
        self.assertNotEqual(result.returncode, 0, output)
        self.assertIn("HandshakeFailed", output)
        self.assertOnNodes(key, digest, set())
        self.daemon.stop()
        self.startTLS()
        self.useHTTP(self.daemon.annexUrl("annex+https"))
        self.client("copy", "--to", CLUSTER, "chain.bin", env=trust)
        self.assertOnNodes(key, digest, {n.name for n in self.cluster.nodes})


class FreshCloneTests(TLSGatewayMixin, unittest.TestCase):
    """
    A stock user clones the gateway from annexd's listener and gets a file
    with git-annex.  Only one setting is needed:
    C{annex.security.allowed-ip-addresses}, because the server is on
    127.0.0.1 (git-annex refuses loopback and private addresses by
    default).  No C{git annex init}, C{sync} or C{fetch}: the first
    git-annex command initialises the clone, downloads annexd's synthesized
    C{/config} (which records C{remote.origin.annexurl} and
    C{remote.origin.annex-uuid}), and the proxied remotes
    (C{origin-mycluster}, C{origin-nodeN}) come from the git-annex branch
    the clone already has.
    """

    def setUp(self):
        self.setUpTLS()
        self.plainPort = freePort()
        self.tlsPort = self.startTLS(plainPort=self.plainPort)
        # The fixture client puts a file on the cluster over ssh and
        # pushes the branch that has it (and its git-annex branch) to the
        # gateway.
        self.key, self.digest = self.writeFile("cloned.bin", 100000)
        self.client("copy", "--to", CLUSTER, "cloned.bin")
        self.assertOnNodes(self.key, self.digest,
                           {n.name for n in self.cluster.nodes})
        self.client("push", "--no-content", REMOTE)

    def clone(self, url, env=None):
        """
        C{git clone URL} into a new directory.

        @return: the clone's path.
        """
        path = os.path.abspath(self.mktemp())
        self.cluster.env.run(["git", "clone", "-q", url, path],
                             cwd=self.cluster.base_dir, env=env)
        return path

    def annex(self, repo, *args, check=True, env=None):
        return self.cluster.env.run(["git-annex", *args], cwd=repo,
                                    check=check, env=env)

    def assertGot(self, repo, name, annexUrl):
        self.assertEqual(sha256(os.path.join(repo, name)), self.digest)
        env = self.cluster.env
        self.assertEqual(env.config(repo, "remote.origin.annexurl"),
                         annexUrl)
        self.assertEqual(env.config(repo, "remote.origin.annex-uuid"),
                         self.cluster.gateway.uuid)

    def test_cloneOverHTTP(self):
        """
        C{git clone http://HOST:PORT/gateway}, allow 127.0.0.1, then
        C{git annex get FILE}: the content comes from the cluster over
        annex+http (checksum verified), and the clone recorded the
        advertised annex+http url and the gateway's uuid.
        """
        url = "http://127.0.0.1:%d/gateway" % (self.plainPort,)
        repo = self.clone(url)
        self.cluster.env.git(repo, "config",
                             "annex.security.allowed-ip-addresses", "all")
        result = self.annex(repo, "get", "cloned.bin")
        self.assertIn("from origin-mycluster", _text(result.stdout))
        self.assertGot(repo, "cloned.bin",
                       "annex+http://127.0.0.1:%d/gateway" % (self.plainPort,))
        self.assertEqual(self.served("GET /gateway/git-annex/%s/v4/key/%s"
                                     % (self.cluster.cluster_uuid, self.key)),
                         1)

    def test_cloneOverHTTPS(self):
        """
        The same over TLS: C{git clone https://HOST:PORT/gateway} (git
        trusts the CA through C{GIT_SSL_CAINFO}), and git-annex, trusting
        it through C{SSL_CERT_FILE}, records the advertised annex+https url
        and gets the file.
        """
        trust = self.ca.clientEnv()
        url = "https://127.0.0.1:%d/gateway" % (self.tlsPort,)
        repo = self.clone(url, env=trust)
        self.cluster.env.git(repo, "config",
                             "annex.security.allowed-ip-addresses", "all")
        self.annex(repo, "get", "cloned.bin", env=trust)
        self.assertGot(repo, "cloned.bin",
                       "annex+https://127.0.0.1:%d/gateway" % (self.tlsPort,))

    def test_cloneBeforeAllowingLoopback(self):
        """
        If the first git-annex command runs before 127.0.0.1 is allowed,
        git-annex cannot download C{/config} and sets
        C{remote.origin.annex-ignore}; the get fails.  Allowing the address
        is then not enough: the user must also unset annex-ignore, and the
        next get works.
        """
        url = "http://127.0.0.1:%d/gateway" % (self.plainPort,)
        repo = self.clone(url)
        env = self.cluster.env
        result = self.annex(repo, "get", "cloned.bin", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("allowed-ip-addresses", _text(result.stderr))
        self.assertEqual(env.config(repo, "remote.origin.annex-ignore"),
                         "true")
        env.git(repo, "config", "annex.security.allowed-ip-addresses", "all")
        result = self.annex(repo, "get", "cloned.bin", check=False)
        self.assertNotEqual(result.returncode, 0)
        env.git(repo, "config", "--unset", "remote.origin.annex-ignore")
        self.annex(repo, "get", "cloned.bin")
        self.assertGot(repo, "cloned.bin",
                       "annex+http://127.0.0.1:%d/gateway" % (self.plainPort,))


class AuthenvOverTLSTests(TLSGatewayMixin, unittest.TestCase):
    """
    C{--authenv --unauth-readonly}: users from
    C{GIT_ANNEX_P2PHTTP_PASSWORD_<user>} are honoured on the TLS listener
    only, so annexd must tell its TLS listener from its plain one.
    """

    user = ("carol", "carol's password")

    def setUp(self):
        self.setUpTLS()
        self.plainPort = freePort()
        self.tlsPort = self.startTLS(
            options=("--authenv", "--unauth-readonly"),
            plainPort=self.plainPort,
            env={"GIT_ANNEX_P2PHTTP_PASSWORD_" + self.user[0]: self.user[1]})

    def connection(self, secure):
        if secure:
            context = ssl.create_default_context(cafile=self.ca.caCert)
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.tlsPort, timeout=30, context=context)
        else:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.plainPort, timeout=30)
        self.addCleanup(connection.close)
        return connection

    def assertNowhere(self, key):
        for node in self.cluster.nodes:
            self.assertIsNone(self.cluster.node_sha256(node, key), node.name)

    def test_rawRequests(self):
        """
        Over plain HTTP, carol's put gets 403 (her credentials are not
        honoured there, so no challenge either), as does an anonymous
        put.  Over TLS an anonymous put or a wrong password gets the 401
        challenge, and carol's put stores on every node.
        """
        data = os.urandom(1000)
        for secure, credentials, status in (
                (False, self.user, 403),
                (False, None, 403),
                (True, None, 401),
                (True, (self.user[0], "wrong"), 401)):
            key, response, body = putRequest(self.connection(secure),
                                             self.cluster, data, credentials)
            self.assertEqual(response.status, status,
                             (secure, credentials, body))
            self.assertEqual(response.getheader("WWW-Authenticate"),
                             CHALLENGE if status == 401 else None)
            self.assertNowhere(key)
        key, response, body = putRequest(self.connection(True), self.cluster,
                                         data, self.user)
        self.assertEqual(response.status, 200, body)
        self.assertTrue(json.loads(body)["stored"], body)
        digest = hashlib.sha256(data).hexdigest()
        self.assertOnNodes(key, digest, {n.name for n in self.cluster.nodes})

    def test_clientOverTLS(self):
        """
        A client trusting the CA, with carol's credentials from a
        credential helper, copies over annex+https; the same client over
        annex+http cannot (nothing stored) and is never asked for
        credentials there.
        """
        log = os.path.abspath(self.mktemp())
        self.cluster.client_git("config", "credential.helper",
                                credentialHelper(*self.user, log))
        trust = self.ca.clientEnv()
        key, digest = self.writeFile("carol.bin", 20000)
        self.useHTTP("annex+http://127.0.0.1:%d/git-annex/"
                     % (self.plainPort,))
        result = self.client("copy", "--to", CLUSTER, "carol.bin",
                             check=False, env=trust)
        self.assertNotEqual(result.returncode, 0, _text(result.stderr))
        self.assertOnNodes(key, digest, set())
        self.assertEqual(helperRequests(log), [])
        self.useHTTP(self.daemon.annexUrl("annex+https"))
        self.client("copy", "--to", CLUSTER, "carol.bin", env=trust)
        self.assertOnNodes(key, digest, {n.name for n in self.cluster.nodes})
        fields = helperRequests(log)[0][1]
        self.assertEqual((fields.get("protocol"), fields.get("host")),
                         ("annex+https", "127.0.0.1:%d" % (self.tlsPort,)))
