# -*- test-case-name: tests.test_client -*-
"""
The one abstraction in the middle of annexd: a repository you can ask the
P2P protocol's questions of.

Front-ends turn wire messages into calls on an L{IRepository}; node
connectors implement it over some transport; a cluster implements it by
fanning out to nodes.  Content moves as Twisted streams: a download writes
into an L{IConsumer} the caller gives it; an upload gives the caller an
L{IConsumer} to write into.  Either way the consumer/producer registration
carries backpressure end to end.
"""

from dataclasses import dataclass

from zope.interface import Attribute, Interface


class RepositoryError(Exception):
    """
    The repository refused or failed a request and said why (a P2P
    C{ERROR}).  The session it came from is still usable.

    @ivar text: the reason, as L{bytes}, fit to relay to a client.
    """

    def __init__(self, text):
        if isinstance(text, str):
            text = text.encode("utf-8", "surrogateescape")
        Exception.__init__(self, text.decode("utf-8", "replace"))
        self.text = text


class RepositoryUnavailable(Exception):
    """
    The repository could not be reached, or its session broke (lost
    connection, protocol violation).  The request did not complete.
    """


class ProtocolNotSupported(RepositoryUnavailable):
    """
    The repository's protocol version lacks what the request needs.
    """


@dataclass(frozen=True)
class Outcome:
    """
    The result of a PUT, REMOVE or DATA-PRESENT.

    @ivar ok: stored / removed.
    @ivar uuids: further repository uuids the answer named (the C{-PLUS}
        lists): where content also is, or was also removed from.
    @ivar alreadyHad: for a PUT, whether the repository already had the
        content (ALREADY-HAVE), so no data was sent.
    """

    ok: bool
    uuids: tuple = ()
    alreadyHad: bool = False


class IContentLock(Interface):
    """
    Content locked in a repository (it cannot be removed while held).
    """

    def release():
        """
        Release the lock.

        @return: a Deferred firing when released.
        """


class IDownload(Interface):
    """
    Content on its way from a repository (the answer to a GET).
    """

    length = Attribute("How many bytes will be delivered (0 if the "
                       "repository lacks the content).")

    def deliver(consumer):
        """
        Write the content into C{consumer}, with backpressure.

        @return: a Deferred firing with the sender's verdict: L{True}
            (VALID), L{False} (INVALID: changed while sending, or absent),
            or L{None} (protocol version 0 sends none).
        """

    def finish(ok):
        """
        Tell the repository whether the receiver accepted the content.

        @return: a Deferred firing when the exchange is over.
        """


class IUpload(Interface):
    """
    An accepted PUT: the repository waits for content from L{offset} on.
    """

    offset = Attribute("The byte offset the repository wants data from "
                       "(it keeps what it got of an interrupted upload).")

    def receive(length):
        """
        Announce C{length} bytes of content (from L{offset} to the end).

        @return: an L{IConsumer} to write exactly C{length} bytes into; its
            C{done} attribute is a Deferred that fires once they are all
            written.
        """

    def finish(valid):
        """
        End the content: C{valid} is the sender's verdict (L{True},
        L{False}, or L{None} when the sender gave none).

        @return: a Deferred firing with an L{Outcome}.
        """

    def dataPresent():
        """
        Instead of sending content, say it is already there (protocol 4).

        @return: a Deferred firing with an L{Outcome}.
        """

    def abort(reason):
        """
        Give up on this upload (the sender went away or failed).
        """


class IRepository(Interface):
    """
    Something annexd can ask the P2P protocol's questions of.
    """

    uuid = Attribute("The repository's uuid, as bytes.")

    def checkPresent(key):
        """
        @return: a Deferred firing with L{True} if the content of C{key}
            is present.
        """

    def lockContent(key):
        """
        Lock the content of C{key} so that it cannot be removed.

        @return: a Deferred firing with an L{IContentLock}, or L{None} if
            the content is not there to lock.
        """

    def remove(key, before=None):
        """
        Remove the content of C{key}; with C{before}, only if this
        repository's clock (see L{getTimestamp}) has not reached it.

        @return: a Deferred firing with an L{Outcome}.
        """

    def getTimestamp():
        """
        @return: a Deferred firing with the repository's monotonic clock, in
            seconds.
        """

    def get(key, associatedFile, offset):
        """
        Start a download of C{key}'s content from C{offset}.

        @return: a Deferred firing with an L{IDownload}.
        """

    def put(key, associatedFile):
        """
        Offer the content of C{key}.

        @return: a Deferred firing with an L{IUpload}, or with an
            L{Outcome} whose C{alreadyHad} is set.
        """


class IStoresFiles(Interface):
    """
    A repository that stores content from a file on the gateway's disk
    (external special remotes take a file name, not a stream).  A cluster
    uploading to several of them spools the content once and hands every
    one of them the same file; a repository proxied alone spools for
    itself inside its L{IRepository.put}.
    """

    needsFile = Attribute(
        "Whether the repository can only store from a file (its put() "
        "spools for itself): a cluster then spools once for all such "
        "nodes and calls storeFile instead of put.")

    def storeFile(key, path):
        """
        Store the content of C{key}, which is the whole of the file
        C{path} (already verified against the key where that is
        possible).  The file is the caller's: read it, do not move or
        change it.

        @return: a Deferred firing with an L{Outcome}.
        """
