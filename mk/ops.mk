# Operations: install and uninstall.
#
#   make install   [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=/etc] [UNITDIR=...]
#   make uninstall (the same variables)
#
# Where things go:
#   $(DESTDIR)$(PREFIX)/bin/rivetd
#   $(DESTDIR)$(UNITDIR)/rivetd.service, rivetd.socket     UNITDIR defaults to /etc/systemd/system:
#       systemd always reads it, whatever PREFIX is ($(PREFIX)/lib/systemd/system is read only
#       for PREFIX=/usr or /usr/local). The service's ExecStart= and EnvironmentFile= are
#       rewritten for BINDIR and SYSCONFDIR.
#   $(DESTDIR)$(SYSCONFDIR)/rivet/rivet.conf.example        replaced on every install
#   $(DESTDIR)$(SYSCONFDIR)/rivet/rivet.conf                created (mode 0640) only when absent,
#       from the example with the REPLACE_ME placeholders emptied, so that rivetd refuses to
#       start until real Stripe keys and prices are filled in. Never overwritten or removed.
#   $(DESTDIR)$(PREFIX)/share/rivetd/redis-rivet.conf      Redis settings for the queue
# Nothing is started or reloaded: after installing on a live system, run
#   systemctl daemon-reload && systemctl enable --now rivetd.socket

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share/rivetd
SYSCONFDIR ?= /etc
UNITDIR    ?= $(SYSCONFDIR)/systemd/system
CONFDIR    := $(SYSCONFDIR)/rivet
INSTALL    ?= install

$(BUILD)/systemd/rivetd.service: systemd/rivetd.service FORCE
	@mkdir -p $(dir $@)
	sed -e 's|/usr/local/bin/rivetd|$(BINDIR)/rivetd|g' -e 's|/etc/rivet/|$(CONFDIR)/|g' $< > $@.tmp
	@mv $@.tmp $@

$(BUILD)/rivet.conf.initial: conf/rivet.conf.example
	@mkdir -p $(dir $@)
	sed -e 's|^\([A-Z_][A-Z0-9_]*\)=.*REPLACE_ME.*$$|\1=|' $< > $@.tmp
	@mv $@.tmp $@

.PHONY: FORCE
FORCE:

install: $(BUILD)/rivetd $(BUILD)/systemd/rivetd.service $(BUILD)/rivet.conf.initial
	$(INSTALL) -d -m 0755 $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(CONFDIR) \
		$(DESTDIR)$(DATADIR)
	$(INSTALL) -m 0755 $(BUILD)/rivetd $(DESTDIR)$(BINDIR)/rivetd
	$(INSTALL) -m 0644 $(BUILD)/systemd/rivetd.service $(DESTDIR)$(UNITDIR)/rivetd.service
	$(INSTALL) -m 0644 systemd/rivetd.socket $(DESTDIR)$(UNITDIR)/rivetd.socket
	$(INSTALL) -m 0644 conf/rivet.conf.example $(DESTDIR)$(CONFDIR)/rivet.conf.example
	$(INSTALL) -m 0644 conf/redis-rivet.conf $(DESTDIR)$(DATADIR)/redis-rivet.conf
	@if [ -e $(DESTDIR)$(CONFDIR)/rivet.conf ]; then \
		echo "install: keeping the existing $(DESTDIR)$(CONFDIR)/rivet.conf"; \
	else \
		$(INSTALL) -m 0640 $(BUILD)/rivet.conf.initial $(DESTDIR)$(CONFDIR)/rivet.conf && \
		echo "install: created $(DESTDIR)$(CONFDIR)/rivet.conf: fill in the Stripe keys and prices"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/rivetd $(DESTDIR)$(UNITDIR)/rivetd.service \
		$(DESTDIR)$(UNITDIR)/rivetd.socket $(DESTDIR)$(CONFDIR)/rivet.conf.example \
		$(DESTDIR)$(DATADIR)/redis-rivet.conf
	@rmdir $(DESTDIR)$(DATADIR) 2>/dev/null || true
	@if [ -e $(DESTDIR)$(CONFDIR)/rivet.conf ]; then \
		echo "uninstall: kept $(DESTDIR)$(CONFDIR)/rivet.conf (it holds secrets: remove it by hand)"; \
	fi
