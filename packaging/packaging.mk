# Package targets (make install, make man, make deb, make rpm); included by the top-level Makefile.
#
# `make install` is the one list of installed files: debian/rules and the RPM spec call
# `install-data` (and the spec also `install-lib`), so the packages cannot drift from it.

SYSTEM_PYTHON ?= /usr/bin/python3
VERSION       := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' ipsec_vip/__init__.py)
BINDIR        ?= $(PREFIX)/bin
MANDIR        ?= $(PREFIX)/share/man
DOCDIR        ?= $(PREFIX)/share/doc/ipsec-vip
UNITDIR       ?= /usr/lib/systemd/system
OCFDIR        ?= /usr/lib/ocf/resource.d/ipsec-vip
PYTHON_SITELIB ?= $(shell $(SYSTEM_PYTHON) packaging/sitelib.py $(PREFIX))
MAN_PAGES     := build/man/ocf_ipsec-vip_strongswan.7 build/man/ipsec-vip.8
UNIT          := packaging/systemd/ipsec-vip-watch@.service
DIST          ?= dist
# Packages are built with the system's tools only (no virtualenv or pyenv Python on PATH).
PKG_ENV       := env PATH=/usr/sbin:/usr/bin:/sbin:/bin
# `make rpm` targets RHEL 9 (Python 3.9); on Fedora, rebuild from the spec with the real macros.
RPM_PYTHON_SITELIB ?= /usr/lib/python3.9/site-packages
PKG_BUILD     ?= build/pkg
# vici has no Debian 12 package: `make deb` builds python3-vici from this PyPI sdist (MIT).
VICI_VERSION  := 6.0.3
VICI_SHA256   := ec926e7a29b6ea9112fe406d1851c3c46143ac625e28089e3d4efce4eac88e56
# Build tools (dpkg-buildpackage requires build-essential even for Architecture: all) and test tools
# (systemd-container: systemd-nspawn boots the Debian 12 root of tests/test_booted.py).
DEB_PACKAGES  := build-essential debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-wheel python3-pip lintian debootstrap systemd-container rpm man-db
APT_PACKAGES  += $(DEB_PACKAGES)

.PHONY: man install-lib install-data deb rpm

# Generated from the code itself (the agent's meta-data, the CLI's argparse parser), never committed.
man: $(MAN_PAGES)

build/man/ocf_ipsec-vip_strongswan.7: ocf/strongswan $(wildcard ipsec_vip/*.py) packaging/manpages.py
	@mkdir -p $(@D)
	PYTHONPATH=$(CURDIR) $(SYSTEM_PYTHON) ocf/strongswan meta-data > $@.xml
	PYTHONPATH=$(CURDIR) $(SYSTEM_PYTHON) packaging/manpages.py ocf $@.xml > $@
	rm -f $@.xml

build/man/ipsec-vip.8: $(wildcard ipsec_vip/*.py ipsec_vip/commands/*.py) packaging/manpages.py
	@mkdir -p $(@D)
	PYTHONPATH=$(CURDIR) $(SYSTEM_PYTHON) packaging/manpages.py cli > $@

install: install-lib install-data

# The library and the ipsec-vip command, for $(SYSTEM_PYTHON) (no dependencies are fetched).
install-lib:
	rm -rf build/pip-target
	$(SYSTEM_PYTHON) -m pip install -q --no-deps --no-index --no-build-isolation --no-compile \
		--target build/pip-target .
	rm -f build/pip-target/*.dist-info/direct_url.json build/pip-target/*.dist-info/REQUESTED \
		build/pip-target/*.dist-info/RECORD
	install -d $(DESTDIR)$(PYTHON_SITELIB) $(DESTDIR)$(BINDIR)
	cp -r build/pip-target/ipsec_vip build/pip-target/ipsec_vip-*.dist-info $(DESTDIR)$(PYTHON_SITELIB)/
	find $(DESTDIR)$(PYTHON_SITELIB)/ipsec_vip -name __pycache__ -prune -exec rm -rf {} +
	install -m 0755 build/pip-target/bin/ipsec-vip $(DESTDIR)$(BINDIR)/ipsec-vip
	sed -i '1s|^#!.*|#!$(SYSTEM_PYTHON)|' $(DESTDIR)$(BINDIR)/ipsec-vip

# Everything but the Python library: agent, unit, man pages, documentation.
install-data: man $(UNIT)
	install -d $(DESTDIR)$(OCFDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man7 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DOCDIR)/examples
	sed '1s|^#!.*|#!$(SYSTEM_PYTHON)|' ocf/strongswan > $(DESTDIR)$(OCFDIR)/strongswan
	chmod 0755 $(DESTDIR)$(OCFDIR)/strongswan
	install -m 0644 $(UNIT) $(DESTDIR)$(UNITDIR)/
	install -m 0644 build/man/ocf_ipsec-vip_strongswan.7 $(DESTDIR)$(MANDIR)/man7/
	install -m 0644 build/man/ipsec-vip.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	install -m 0644 packaging/examples/swanctl.conf $(DESTDIR)$(DOCDIR)/examples/

# The source tree as the packages see it: the working tree without caches and build output.
$(PKG_BUILD)/src.tar: FORCE
	@mkdir -p $(@D)
	tar -cf $@ --exclude-vcs --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.cache \
		--exclude=./.tox --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
		--exclude=.mypy_cache --exclude=.ruff_cache --exclude=.hypothesis .

$(PKG_BUILD)/vici-$(VICI_VERSION).tar.gz:
	rm -rf $(PKG_BUILD)/sdist && mkdir -p $(PKG_BUILD)/sdist
	$(SYSTEM_PYTHON) -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
		-d $(PKG_BUILD)/sdist vici==$(VICI_VERSION)
	echo "$(VICI_SHA256)  $(PKG_BUILD)/sdist/vici-$(VICI_VERSION).tar.gz" | sha256sum -c --quiet
	mv $(PKG_BUILD)/sdist/vici-$(VICI_VERSION).tar.gz $@

# Two binary packages: ipsec-vip and python3-vici (built from the pinned PyPI sdist).
deb: $(PKG_BUILD)/src.tar $(PKG_BUILD)/vici-$(VICI_VERSION).tar.gz
	rm -rf $(PKG_BUILD)/deb && mkdir -p $(PKG_BUILD)/deb/ipsec-vip-$(VERSION) $(DIST)
	tar -xf $(PKG_BUILD)/src.tar -C $(PKG_BUILD)/deb/ipsec-vip-$(VERSION)
	cp -r packaging/deb/debian $(PKG_BUILD)/deb/ipsec-vip-$(VERSION)/
	packaging/deb/changelog ipsec-vip $(VERSION) > $(PKG_BUILD)/deb/ipsec-vip-$(VERSION)/debian/changelog
	cd $(PKG_BUILD)/deb/ipsec-vip-$(VERSION) && $(PKG_ENV) dpkg-buildpackage -b -us -uc -tc --no-sign
	cp $(PKG_BUILD)/vici-$(VICI_VERSION).tar.gz $(PKG_BUILD)/deb/python-vici_$(VICI_VERSION).orig.tar.gz
	tar -xzf $(PKG_BUILD)/deb/python-vici_$(VICI_VERSION).orig.tar.gz -C $(PKG_BUILD)/deb
	cp -r packaging/deb/vici/debian $(PKG_BUILD)/deb/vici-$(VICI_VERSION)/
	packaging/deb/changelog python-vici $(VICI_VERSION)-0~ipsecvip1 > $(PKG_BUILD)/deb/vici-$(VICI_VERSION)/debian/changelog
	cd $(PKG_BUILD)/deb/vici-$(VICI_VERSION) && $(PKG_ENV) dpkg-buildpackage -b -us -uc -tc --no-sign
	cp $(PKG_BUILD)/deb/*.deb $(DIST)/
	lintian --info --display-info $(PKG_BUILD)/deb/*.changes | tee $(PKG_BUILD)/lintian.txt

# A noarch RPM for Fedora / RHEL 9, built here with Debian's rpmbuild; --define supplies what
# the distribution's macro packages (python3-rpm-macros, systemd-rpm-macros) would.
rpm: $(PKG_BUILD)/src.tar
	rm -rf $(PKG_BUILD)/rpm && mkdir -p $(PKG_BUILD)/rpm/SOURCES $(DIST)
	mkdir -p $(PKG_BUILD)/rpm/ipsec-vip-$(VERSION) && tar -xf $< -C $(PKG_BUILD)/rpm/ipsec-vip-$(VERSION)
	tar -czf $(PKG_BUILD)/rpm/SOURCES/ipsec-vip-$(VERSION).tar.gz -C $(PKG_BUILD)/rpm ipsec-vip-$(VERSION)
	$(PKG_ENV) rpmbuild -bb --nodeps --define '_topdir $(abspath $(PKG_BUILD))/rpm' \
		--define '__python3 /usr/bin/python3' --define 'python3_sitelib $(RPM_PYTHON_SITELIB)' \
		--define '_unitdir /usr/lib/systemd/system' \
		--define '__brp_compress /bin/bash %{_rpmconfigdir}/brp-compress %{?_prefix}' packaging/rpm/ipsec-vip.spec
	cp $(PKG_BUILD)/rpm/RPMS/noarch/*.rpm $(DIST)/

FORCE:
