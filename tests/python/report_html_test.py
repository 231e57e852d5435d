#!/usr/bin/python3
"""report.html in headless Chromium (issue 18): prune-local writes an artifact of the tiny model,
Chromium (Debian's) loads its report.html from disk with the network off, and the rendered page
is checked: the DOM has the three charts with their data, and the screenshot shows them (the
series' colours cover real areas of the image, not a blank page).

    report_html_test.py --bin-dir build/bin --source-dir . [--screenshot OUT.png]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ARGS = None
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(*args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class ReportHtmlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="reporthtml-")
        for split, seed in (("search", 1000), ("eval", 2000)):
            subprocess.run([os.path.join(ARGS.bin_dir, "shapes-vqa"), "--seed", str(seed),
                            "--split", split, "--count", "32", "--out",
                            os.path.join(cls.tmp, split)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.out = os.path.join(cls.tmp, "artifact")
        subprocess.run([os.path.join(ARGS.bin_dir, "prune-local"),
                        "--model=" + os.path.join(ARGS.source_dir, "models/tiny-llava-shapes"),
                        "--samples=" + os.path.join(cls.tmp, "search"),
                        "--eval-samples=" + os.path.join(cls.tmp, "eval"), "--flops-budget=0.5",
                        "--population=12", "--parents=4", "--generations=6", "--threads=2",
                        "--out=" + cls.out], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cls.page = "file://" + os.path.join(cls.out, "report.html")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_the_rendered_dom_has_every_chart(self):
        self.assertTrue(os.path.exists(CHROMIUM), "chromium is missing: scripts/bootstrap.sh")
        run = chromium("--dump-dom", self.page)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        dom = run.stdout
        for chart in ("chart-generations", "chart-policy", "chart-pareto"):
            self.assertIn(f'id="{chart}"', dom)
        self.assertEqual(dom.count('class="bar"'), 6)  # one per decoder layer
        self.assertGreaterEqual(dom.count('class="evaluated"'), 12)
        self.assertEqual(dom.count('class="uniform"'), 1)
        self.assertIn('class="pareto-front"', dom)
        self.assertNotRegex(dom, r"<script|src=|href=")

    def test_the_screenshot_shows_the_plots(self):
        from PIL import Image
        shot = ARGS.screenshot or os.path.join(self.tmp, "report.png")
        run = chromium("--window-size=800,1500", "--screenshot=" + shot, self.page)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        img = Image.open(shot).convert("RGB")
        self.assertEqual(img.size, (800, 1500))
        colours = {}
        for px in img.getdata():
            colours[px] = colours.get(px, 0) + 1
        blue = colours.get((0x4c, 0x78, 0xa8), 0)  # bars, series, points
        orange = colours.get((0xf5, 0x85, 0x18), 0)  # fitness series, the pick
        self.assertGreater(blue, 20000, "the policy bars / series are not drawn")
        self.assertGreater(orange, 200, "the fitness series is not drawn")
        white = colours.get((255, 255, 255), 0)
        self.assertLess(white, 0.95 * img.size[0] * img.size[1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--screenshot", help="keep the screenshot here (docs/report-screenshot.png)")
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest)
