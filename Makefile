.PHONY: run demo test bench soak lint fuzz screenshots cluster-test
run:
	scripts/run.sh
demo:
	scripts/run.sh --demo --speed 10
test:
	scripts/test.sh
lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
bench:
	scripts/setup.sh && .venv/bin/python benchmarks/run_all.py
soak:
	scripts/setup.sh && .venv/bin/python benchmarks/soak.py
fuzz:
	scripts/setup.sh && HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest -q -p no:warnings tests/test_hostile_*.py
screenshots:  # refresh docs/screenshots/ from the browser tests (Chromium: scripts/setup-browser.sh)
	CRYPTOMON_SCREENSHOTS_TO_DOCS=1 .venv/bin/pytest -q -p no:cacheprovider tests/browser
cluster-test:
	scripts/setup.sh && .venv/bin/pytest -q -s -m cluster tests/test_cluster.py
