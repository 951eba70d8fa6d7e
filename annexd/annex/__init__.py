"""
The state of the gateway's own git-annex repository.

annexd reads what git-annex knows (the git config, the C{git-annex}
branch and its journal: uuids, descriptions, trust, groups, preferred
content, proxies, clusters, location logs) and records location changes
the way git-annex does (shared/spec/annex-state.md sections 1 and 2):

  - L{annexd.annex.logs}: pure parsers for the branch's log files;
  - L{annexd.annex.branch}: reading the effective content of a branch
    file (branch blob, journal, private journal, unmerged sibling
    branches), blocking or through the reactor;
  - L{annexd.annex.location}: location log paths, reading present uuids,
    and the safe direct journal writer;
  - L{annexd.annex.state}: the gateway's configuration as one snapshot,
    L{annexd.annex.state.GatewayState}.
"""
