# -*- test-case-name: tests.test_sshnode -*-
"""
A node reached over ssh: C{ssh HOST git-annex-shell p2pstdio DIR ...}.

annexd starts ssh the way git-annex does (shared/spec/p2p-protocol.md
section 4.1): the remote command is C{git-annex-shell 'p2pstdio' 'DIR'
'GATEWAYUUID' --uuid NODEUUID} with every parameter single-quoted, the
directory mapped from the remote's url (C{/~/} for home-relative paths), the
port from the url, and the remote's C{annex-ssh-options}.  Like git-annex,
C{GIT_SSH_COMMAND} (or C{GIT_SSH}) replaces C{ssh} when
C{GIT_ANNEX_USE_GIT_SSH=1}.  Sessions are pooled like local ones.
"""

import os
import shlex
import shutil
from urllib.parse import urlsplit


from annexd.nodes.pool import SessionPool
from annexd.nodes.process import childEnvironment
from annexd.protocol.messages import MAX_PROTOCOL_VERSION


def parseSshUrl(url):
    """
    Split an ssh remote url into C{(host, port, directory)} as git-annex
    does: C{ssh://[user@]host[:port]/path}, C{ssh://host/~/path},
    C{[user@]host:path} (relative paths become C{/~/path}).

    @return: the triple, or L{None} if C{url} is not an ssh url.
    """
    for prefix in ("ssh://", "git+ssh://", "ssh+git://"):
        if url.startswith(prefix):
            parts = urlsplit("ssh://" + url[len(prefix):])
            if not parts.hostname:
                return None
            host = parts.hostname
            if parts.username:
                host = "%s@%s" % (parts.username, host)
            return host, parts.port, parts.path or "/"
    if "://" in url or ":" not in url or url.startswith("/"):
        return None
    host, _, directory = url.partition(":")
    if "/" in host:
        return None
    if directory.startswith("~"):
        directory = "/" + directory
    elif not directory.startswith("/"):
        directory = "/~/" + directory
    return host, None, directory


def _quote(word):
    return "'" + word.replace("'", "'\"'\"'") + "'"


def remoteCommand(shell, directory, gatewayUUID, uuid):
    """
    The remote command line git-annex would send.
    """
    return "%s %s %s %s --uuid %s" % (
        shell or "git-annex-shell", _quote("p2pstdio"), _quote(directory),
        _quote(gatewayUUID), uuid)


def sshArgv(host, port, options, command, environ=None):
    """
    The program and arguments that run C{command} on C{host}.
    """
    environ = os.environ if environ is None else environ
    args = list(options) + (["-p", str(port)] if port else []) + ["-T", host, command]
    custom = environ.get("GIT_SSH_COMMAND") or environ.get("GIT_SSH")
    if custom and environ.get("GIT_ANNEX_USE_GIT_SSH") == "1":
        if environ.get("GIT_SSH_COMMAND"):
            return "/bin/sh", ["sh", "-c", custom + ' "$@"', custom] + args
        return custom, [custom] + args
    return "ssh", ["ssh"] + args


class SshNode(SessionPool):
    """
    A git-annex repository reached over ssh.
    """

    def __init__(self, reactor, url, uuid, clientUUID, maxSessions=1,
                 name=None, sshOptions=None, shell=None,
                 version=MAX_PROTOCOL_VERSION, bypass=(), environment=None, **poolOptions):
        parsed = parseSshUrl(url)
        if parsed is None:
            raise ValueError("not an ssh url: %s" % (url,))
        SessionPool.__init__(self, uuid, self._openSession, maxSessions,
                             name or url, reactor=reactor,
                             **poolOptions)
        self.reactor = reactor
        self.host, self.port, self.directory = parsed
        self.clientUUID = clientUUID
        self.sshOptions = shlex.split(sshOptions or "")
        self.shell = shell
        self.version = version
        self.bypass = bypass
        self._environment = (childEnvironment() if environment is None
                             else dict(environment))

    def _openSession(self):
        command = remoteCommand(
            self.shell, self.directory,
            self.clientUUID.decode("utf-8", "surrogateescape"),
            self.uuid.decode("utf-8", "surrogateescape"))
        executable, args = sshArgv(self.host, self.port, self.sshOptions,
                                   command, self._environment)
        if executable == "ssh":
            executable = shutil.which(
                "ssh", path=self._environment.get("PATH")) or "/usr/bin/ssh"
        return self._childSession(self.reactor, executable, args,
                                  self._environment, "ssh", self.version,
                                  self.bypass)

