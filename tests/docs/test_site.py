"""The site builds strictly (links, anchors, references, nav) and reads offline."""

from __future__ import annotations

import re

import pytest

from tests.docs.snippets import ROOT

# Attributes through which a page loads something at view time.
_LOADED = re.compile(
    r"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*?\bsrc=[\"']([^\"']+)"
    r"|<link\b[^>]*?\bhref=[\"']([^\"']+)",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"(?:@import\s+|url\()\s*[\"']?([^\"')\s]+)", re.IGNORECASE)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


@pytest.mark.timeout(300)
def test_strict_build_passes(built_site):
    pages = {p.relative_to(built_site).as_posix() for p in built_site.rglob("*.html")}
    for expected in ("index.html", "getting-started.html", "trainer.html", "reference/index.html"):
        assert expected in pages, f"{expected} missing from the built site: {sorted(pages)}"


@pytest.mark.timeout(300)
def test_site_fetches_nothing_from_other_hosts(built_site):
    external = []
    for html in built_site.rglob("*.html"):
        for match in _LOADED.finditer(html.read_text(encoding="utf-8")):
            url = match.group(1) or match.group(2)
            if _EXTERNAL.match(url):
                external.append(f"{html.relative_to(built_site)}: {url}")
    for css in built_site.rglob("*.css"):
        for match in _CSS_URL.finditer(css.read_text(encoding="utf-8")):
            if _EXTERNAL.match(match.group(1)):
                external.append(f"{css.relative_to(built_site)}: {match.group(1)}")
    assert not external, "the site would fetch these at view time:\n" + "\n".join(sorted(set(external)))


def test_external_url_check_sees_what_it_must():
    page = '<link rel="stylesheet" href="https://fonts.example/x.css"><script src="//cdn.example/a.js"></script>'
    found = [m.group(1) or m.group(2) for m in _LOADED.finditer(page)]
    assert [u for u in found if _EXTERNAL.match(u)] == ["https://fonts.example/x.css", "//cdn.example/a.js"]
    assert not _EXTERNAL.match("assets/javascripts/bundle.js")


def test_site_folder_is_ignored_by_git():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "site/" in lines, "site/ (mkdocs' output) must be git-ignored"
