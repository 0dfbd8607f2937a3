#!/usr/bin/perl
# bench/callgrind-summary.pl FILE_A N_A FILE_B N_B [TOP=n in the environment]:
# per-request instructions from the difference of two
# callgrind dumps (same number of new connections in both, so handshakes cancel out)
use strict; use warnings;
my ($fa, $na, $fb, $nb) = @ARGV;
sub load {
  my ($file) = @_;
  open my $f, '<', $file or die "$file: $!";
  my (%fn, %ob, $curob, $cur, $callee, $skip, %self, %calls, %alloc_sites, $total);
  while (<$f>) {
    if (/^ob=\((\d+)\)(?: (.*))?$/) { $ob{$1} = $2 if defined $2; $curob = $ob{$1}; next }
    if (/^cob=\((\d+)\)(?: (.*))?$/) { $ob{$1} = $2 if defined $2; next }
    if (/^summary:\s+(\d+)/) { $total = $1; next }
    if (/^fn=\((\d+)\)(?: (.*))?$/) { $fn{$1} = $2 if defined $2; $cur = $fn{$1}; $cur = "$cur in " . ($curob =~ s{.*/}{}r) if $cur =~ /^0x/; next }
    if (/^cfn=\((\d+)\)(?: (.*))?$/) { $fn{$1} = $2 if defined $2; $callee = $fn{$1}; next }
    if (/^calls=(\d+)/) {
      my $k = $1;
      $calls{$callee} += $k;
      $alloc_sites{$cur} += $k if $callee =~ /^(malloc|realloc|calloc|posix_memalign)$/;
      $skip = 1;
      next;
    }
    if (/^([+-]?\d+|\*)\s+(\d+)/) { if ($skip) { $skip = 0; next } $self{$cur} += $2; next }
  }
  return { total => $total, self => \%self, calls => \%calls, sites => \%alloc_sites };
}
my ($A, $B) = (load($fa), load($fb));
my $n = $nb - $na;
my %self; $self{$_} += $B->{self}{$_} for keys %{$B->{self}}; $self{$_} -= $A->{self}{$_} for keys %{$A->{self}};
my %calls; $calls{$_} += $B->{calls}{$_} for keys %{$B->{calls}}; $calls{$_} -= $A->{calls}{$_} for keys %{$A->{calls}};
my $total = $B->{total} - $A->{total};
sub comp { # which component a function's own instructions belong to
  my ($fn) = @_;
  local $_ = $fn;
  return 'allocator (malloc, free, realloc)' if /^(_int_malloc|_int_free|_int_realloc|malloc|free|realloc|calloc|malloc_consolidate|unlink_chunk.*|tcache_.*|__libc_.*alloc.*|__libc_free|alloc_perturb|_mid_memalign|posix_memalign|aligned_alloc|checked_request2size|arena_get.*|mremap_chunk|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_.*|mi_.*|_mi_.*)$/;
  return 'memcpy, memmove, memset, memcmp' if /^__(mem|str|wmem)\w*(avx|sse|erms|evex)\w*$/ || /^(memcpy|memmove|memset|memcmp|bcmp)$/;
  return 'TLS record crypto (ring AES-GCM)' if /aesni|aes_hw|gcm_|ghash|_aesni_ctr32|ring::aead|ChaCha|chacha|poly1305/i;
  return 'field crypto (aes-gcm, aes, polyval, base64)' if /^<?(aes_gcm|aes|polyval|ghash|base64|universal_hash|aead|cipher|ctr)::/ || /as (aes_gcm|polyval|universal_hash|cipher|aead|base64)::/;
  return 'TLS handshake crypto (ring x25519, sha, ecdsa, rsa)' if /x25519|curve25519|sha256|sha512|ecp_nistz|p256|p384|\bbn_|LIMBS|\brsa|ecdsa|ring::digest|ring::hmac|ring::hkdf|fiat_/i;
  my $s = $fn; $s =~ s/^<//; $s =~ s/^&(mut )?//;
  return 'rustls, tokio-rustls' if $s =~ /^(rustls|tokio_rustls)::/;
  return 'hyper (h1/h2 protocol)' if $s =~ /^(hyper|h2)::/;
  return 'hyper-util (pool, legacy client, auto server)' if $s =~ /^hyper_util::/;
  return 'http, httparse (headers, URIs)' if $s =~ /^(http|httparse|http_body|http_body_util)::/;
  return 'tokio runtime, mio' if $s =~ /^(tokio|mio)::/;
  return 'fieldseal' if $s =~ /^fieldseal::/;
  return 'bytes' if $s =~ /^bytes::/;
  return 'formatting (core::fmt, alloc::fmt)' if $s =~ /^(core::fmt|alloc::fmt|<?core::net::.*fmt|alloc::string::ToString)/ || $s =~ /as core::fmt::/;
  return 'hashing (SipHash, std HashMap)' if $s =~ /sip::|hash::|hashbrown/;
  return 'prometheus-client, metrics' if $s =~ /prometheus/;
  return 'futures-util, futures-core' if $s =~ /^futures/;
  return 'tracing' if $s =~ /^tracing/;
  return 'serde_json' if $s =~ /serde_json|serde_core|serde::/;
  return 'Rust std, core, alloc (other)' if $s =~ /^(core|std|alloc)::/;
  return 'nginx' if /^ngx_/;
  return 'OpenSSL (libssl, libcrypto)' if / in lib(ssl|crypto)/;
  return 'OpenSSL (libssl, libcrypto)' if /^(SSL_|ssl|tls|EVP_|OPENSSL|CRYPTO_|ossl_|BIO_|ERR_|OBJ_|ASN1_|X509|BN_|EC_|aesni_|gcm_|bsaes|sha\d*_|ASYNC|RAND|PROV|EVP)/i;
  return 'HAProxy' if /^(h1_|hlua|stream_|process_stream|si_|sc_|cs_|conn_|http_|htx_|b_|channel_|task_|tasklet_|fd_|sock_|ssl_sock|pool_|run_|__pool|ha_|sample_|proxy_|srv_|lb_|be_|h2_|listener_|session_|appctx_|tcp_|event_|_do_poll|mux_|raw_sock|xprt_|tick_|wake_|htx|smp_|act_|vars_|ist|http_req|http_res)/;
  return 'HAProxy' if / in haproxy$/;
  return 'nginx' if / in nginx$/;
  return 'libc (other)' if / in libc\.so/;
  return 'libc (other)' if /^_*(__GI_|__libc|_IO_|__lll|pthread|___pthread|clock_gettime|__vdso|epoll|recv|send|read|write|__errno)/;
  return 'other';
}
my %c; $c{comp($_)} += $self{$_} for keys %self;
printf "instructions per request: %.0f (over %d requests)\n", $total / $n, $n;
for my $k (sort { $c{$b} <=> $c{$a} } keys %c) {
  next if abs($c{$k}) / $total < 0.004;
  printf "  %-52s %7.0f  %5.1f%%\n", $k, $c{$k} / $n, 100 * $c{$k} / $total;
}
my @al = grep { ($calls{$_} // 0) > 0 } qw(malloc free realloc calloc posix_memalign __rust_alloc __rust_dealloc __rust_realloc);
printf "allocator calls per request: %s\n", join(', ', map { sprintf "%s %.2f", $_, $calls{$_} / $n } @al);
if ($ENV{TOP}) {
  my %sites; $sites{$_} += $B->{sites}{$_} for keys %{$B->{sites}}; $sites{$_} -= $A->{sites}{$_} for keys %{$A->{sites}};
  print "direct callers of malloc, realloc, calloc, posix_memalign (calls per request >= 0.5):\n";
  for my $fn (sort { $sites{$b} <=> $sites{$a} } keys %sites) { last if $sites{$fn} / $n < 0.5; printf "  %6.2f  %s\n", $sites{$fn} / $n, substr($fn, 0, 160) }
  print "top functions by own instructions:\n";
  my $k = 0;
  for my $fn (sort { $self{$b} <=> $self{$a} } keys %self) { last if ++$k > $ENV{TOP}; printf "  %7.0f %5.2f%%  [%s] %s\n", $self{$fn} / $n, 100 * $self{$fn} / $total, comp($fn), substr($fn, 0, 140) }
}
