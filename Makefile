# rivetd — hand-written Makefile with -MMD dependency files.
#
#   make            build build/rivetd
#   make run        set up (Debian packages) and run rivetd with the local setup in conf/
#   make test       set up, build, run every test, then again under ASan+UBSan, then the fuzzers
#                   briefly and the format check
#   make check-all  the same without the set-up; make check: this build's tests only
#   make bench      benchmarks (wrk), printing figures
#   make SAN=1 BUILD=build/san ...   a sanitizer build

CC      ?= cc
BUILD   ?= build
PKGS    := libuv libcurl libcjson hiredis
LLHTTP_SRC := /usr/share/llhttp
LLHTTP_INC := /usr/share/include/llhttp

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
           -Wno-unused-parameter
CFLAGS  ?= -O2 -g
ifeq ($(SAN),1)
HARDEN  := -fstack-protector-strong -fPIE
CFLAGS  := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDSAN   := -fsanitize=address,undefined
else
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
endif
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(HARDEN) $(CFLAGS) -Iinclude -I$(LLHTTP_INC) $(PKG_CFLAGS)
LDFLAGS += -pie -Wl,-z,relro,-z,now $(LDSAN)
LIBS    := $(PKG_LIBS) -lmbedcrypto -lm

SRCS     := $(wildcard src/*.c)
OBJS     := $(SRCS:src/%.c=$(BUILD)/src/%.o)
LIB_OBJS := $(filter-out $(BUILD)/src/main.o,$(OBJS))
LLHTTP_OBJS := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
LIBRIVET := $(BUILD)/librivet.a

UNIT_SRCS  := $(wildcard test/unit/test_*.c)
UNIT_BINS  := $(UNIT_SRCS:test/unit/%.c=$(BUILD)/test/unit/%)
INTEG_SRCS := $(wildcard test/integration/test_*.c)
INTEG_BINS := $(INTEG_SRCS:test/integration/%.c=$(BUILD)/test/integration/%)
HARNESS_OBJS := $(patsubst test/integration/%.c,$(BUILD)/test/integration/%.o,$(filter-out $(INTEG_SRCS),$(wildcard test/integration/*.c)))

.PHONY: all deps run test check check-all format format-check unit integration san-test bench \
        clean install uninstall fuzz fuzz-smoke

all: $(BUILD)/rivetd

deps:
	@deps/install.sh

$(BUILD)/rivetd: $(OBJS) $(LLHTTP_OBJS)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(LIBRIVET): $(LIB_OBJS) $(LLHTTP_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

# handlers_docs.c embeds docs/openapi.json and the page rendered from it with the assembler's
# .incbin, which -MMD does not record: the dependencies are named here, so that an edit of the
# description or of the renderer rebuilds the page and the object.
DOCS_HTML := $(BUILD)/gen/docs.html

$(DOCS_HTML): docs/openapi.json tools/render_docs.py
	@mkdir -p $(dir $@)
	python3 tools/render_docs.py docs/openapi.json $@

$(BUILD)/src/handlers_docs.o: docs/openapi.json $(DOCS_HTML)
$(BUILD)/src/queue.o: src/apply.lua
$(BUILD)/src/handlers_docs.o: ALL_CFLAGS += -DRV_DOCS_HTML_PATH='"$(DOCS_HTML)"'

# llhttp is compiled from Debian's node-llhttp sources; its generated code is not ours to lint.
# Strict mode: without it llhttp skips the two bytes after a chunk's data unread, whatever they
# are, and what follows them would be taken as the next request.
LLHTTP_FLAGS := -DLLHTTP_STRICT_MODE=1
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -fPIE $(HARDEN) $(filter -fsanitize% -fno-sanitize%,$(CFLAGS)) $(LLHTTP_FLAGS) -I$(LLHTTP_INC) -w -c -o $@ $<

$(BUILD)/test/unit/%: test/unit/%.c $(LIBRIVET)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(LIBRIVET) $(LIBS) -lcmocka

$(BUILD)/test/integration/%.o: test/integration/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/test/integration/test_%: test/integration/test_%.c $(HARNESS_OBJS) $(LIBRIVET)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(HARNESS_OBJS) $(LIBRIVET) $(LIBS) -lcmocka

unit: $(UNIT_BINS)
	@test/run-tests.sh unit $(BUILD) $(UNIT_BINS)

integration: $(BUILD)/rivetd $(INTEG_BINS)
	@test/run-tests.sh integration $(BUILD) $(INTEG_BINS)

# check: this build's tests. check-all: everything make test runs, without the set-up (for a
# developer re-running the tests). test: set up, then check-all.
check: unit integration

check-all: format-check
	$(MAKE) check
	$(MAKE) SAN=1 BUILD=build/san check
	$(MAKE) fuzz-smoke

test: deps
	$(MAKE) check-all

# The code is formatted as .clang-format says; format rewrites it so, format-check fails if not.
FORMAT_FILES = $(wildcard src/*.c include/rivet/*.h test/unit/*.c test/integration/*.c \
                 test/integration/*.h test/fuzz/*.c test/fuzz/*.h bench/*.c)

format:
	clang-format -i $(FORMAT_FILES)

format-check:
	@bad=$$(for f in $(FORMAT_FILES); do clang-format "$$f" | cmp -s - "$$f" || echo "$$f"; done); \
	if [ -n "$$bad" ]; then echo "not formatted as .clang-format says (make format):"; \
	echo "$$bad"; exit 1; fi; echo "format: $(words $(FORMAT_FILES)) files as .clang-format says"

bench: $(BUILD)/rivetd
	@deps/install.sh bench
	@bench/run.sh $(BUILD)

run: deps $(BUILD)/rivetd
	@conf/run-local.sh $(BUILD)

clean:
	rm -rf build

include mk/ops.mk
include bench/bench.mk
include mk/fuzz.mk
-include $(wildcard $(BUILD)/src/*.d $(BUILD)/test/*/*.d)
