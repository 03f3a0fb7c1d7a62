#!/usr/bin/env python3
"""Check a review page (`sv-data review --out DIR`) in a headless browser: Debian's Chromium loads
DIR/index.html and every image on it decodes (complete, non-zero natural size), and there is one
image per row of DIR/labels.csv.

A copy of the page with a small script that, once the page has loaded, writes the count of loaded
and broken images into the DOM is opened with `chromium --headless --dump-dom`; the page itself is
not changed.

    python3 scripts/check_review_page.py DIR
"""
import csv, os, re, shutil, subprocess, sys

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const d = document.createElement('div');
  d.id = 'sv-probe';
  d.textContent = `images=${imgs.length} loaded=${ok}`;
  document.body.appendChild(d);
});
</script>"""


def main():
    out = sys.argv[1]
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    with open(os.path.join(out, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    page = open(os.path.join(out, "index.html")).read()
    probe = os.path.join(out, ".probe.html")
    open(probe, "w").write(page.replace("</body>", PROBE + "</body>"))
    try:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=10000", "--dump-dom", "file://" + os.path.abspath(probe)],
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout
    finally:
        os.remove(probe)
    m = re.search(r'id="sv-probe">images=(\d+) loaded=(\d+)<', dom)
    assert m, "the page did not finish loading: " + dom[-500:]
    images, loaded = int(m.group(1)), int(m.group(2))
    assert images == len(rows) > 0, f"{images} images on the page, {len(rows)} rows in labels.csv"
    assert loaded == images, f"{images - loaded} of {images} images did not load"
    print(f"review page: chromium loaded all {images} images ({len(rows)} rows to label)")


if __name__ == "__main__":
    main()
