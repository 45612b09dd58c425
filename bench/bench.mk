# Benchmark helpers, included by the main Makefile.
#
# webhook_load: the load generator of bench/webhook.sh. It reuses rv_webhook_sign from
# librivet.a to check its own signatures.

BENCH_BINS := $(BUILD)/bench/webhook_load

$(BUILD)/bench/webhook_load: bench/webhook_load.c $(LIBRIVET)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP $(LDFLAGS) -o $@ $< $(LIBRIVET) $(LIBS)

bench: $(BENCH_BINS)

-include $(BUILD)/bench/*.d
