# Thin wrapper around CMake. The two commands that matter:
#   make demo   build and run the demo in the foreground
#   make test   unit tests (ASan+UBSan), integration tests, a ThreadSanitizer
#               smoke run, short fuzz runs
# Also: make (release build), make bench, make fuzz, make clean.

JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
BUILD      := build
RELEASE    := $(BUILD)/release
ASAN       := $(BUILD)/asan
FUZZ       := $(BUILD)/fuzz
TSAN       := $(BUILD)/tsan
FUZZ_SECS  ?= 30
WERROR     ?= ON
# Debian's interpreter, which has python3-pytest/requests (a pyenv python3 may not)
PYTHON     ?= /usr/bin/python3

.PHONY: all release asan tsan fuzz-build test unit integration tsan-smoke fuzz-short fuzz bench demo deps clean format

all: release

deps:
	@bash scripts/deps.sh

release:
	@cmake -S . -B $(RELEASE) -DCMAKE_BUILD_TYPE=Release -DWEFT_TESTS=OFF -DWEFT_WERROR=$(WERROR) >/dev/null
	@cmake --build $(RELEASE) -j$(JOBS)

asan:
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DWEFT_SANITIZE=ON -DWEFT_WERROR=$(WERROR) >/dev/null
	@cmake --build $(ASAN) -j$(JOBS)

tsan:
	@CC=clang cmake -S . -B $(TSAN) -DCMAKE_BUILD_TYPE=Debug -DWEFT_TESTS=OFF -DWEFT_WERROR=$(WERROR) \
	    -DCMAKE_C_FLAGS="-fsanitize=thread -g -O1" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" >/dev/null
	@cmake --build $(TSAN) -j$(JOBS)

fuzz-build:
	@CC=clang cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=Debug -DWEFT_FUZZ=ON -DWEFT_TESTS=OFF \
	    -DWEFT_SANITIZE=ON -DWEFT_WERROR=$(WERROR) >/dev/null
	@cmake --build $(FUZZ) -j$(JOBS)

test: deps asan tsan fuzz-build
	@$(MAKE) --no-print-directory unit integration tsan-smoke fuzz-short

unit:
	@echo "== unit tests (ASan+UBSan)"
	@cd $(ASAN) && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    ctest --output-on-failure -j$(JOBS)

integration:
	@echo "== integration tests (pytest, ASan+UBSan binary)"
	@WEFT_BIN=$(abspath $(ASAN))/weft $(PYTHON) -m pytest -q tests/integration

tsan-smoke:
	@echo "== ThreadSanitizer smoke (hello + gateway, 2 workers, load and reloads)"
	@bash tests/tsan/smoke.sh $(TSAN)

fuzz-short:
	@echo "== fuzz ($(FUZZ_SECS)s per harness)"
	@bash tests/fuzz/run.sh $(FUZZ) $(FUZZ_SECS)

fuzz: fuzz-build
	@bash tests/fuzz/run.sh $(FUZZ) $${FUZZ_SECS:-600}

bench: deps release
	@bash bench/run.sh $(RELEASE)/weft

demo: deps release
	@bash scripts/demo.sh $(RELEASE)/weft

format:
	@clang-format -i include/weft/*.h src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf $(BUILD)
