"""
Reading Prometheus metrics as a scraper does (prometheus_client's parser).
"""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def parseSamples(text):
    """
    Every sample of an exposition.

    @return: C{{(sample name, frozenset of label items): value}}.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = \
                sample.value
    return found


def scrape(url):
    """
    GET C{url} and parse its samples (see L{parseSamples}).
    """
    with urllib.request.urlopen(url, timeout=30) as response:
        return parseSamples(response.read().decode("utf-8"))


def sample(samples, name, default=None, **labels):
    """
    The value of sample C{name} with exactly C{labels}, or C{default}.
    """
    return samples.get((name, frozenset(labels.items())), default)
