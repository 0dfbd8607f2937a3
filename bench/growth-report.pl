#!/usr/bin/env perl
# Markdown tables from bench/growth.sh's cells.tsv:
#   bench/growth-report.pl cells.tsv CLK_TCK NCPU
use strict;
use warnings;

my ($tsv, $hz, $ncpu) = @ARGV;
die "usage: $0 cells.tsv CLK_TCK NCPU\n" unless $ncpu;
open my $in, '<', $tsv or die "$tsv: $!\n";
my $head = <$in>;
chomp $head;
my @cols = split /\t/, $head;
my (%agg, %protos, %sizes, %fields);
while (<$in>) {
    chomp;
    my %r;
    @r{@cols} = split /\t/;
    my $k = join ' ', @r{qw(proto case size fields)};
    $agg{$k}{$_} += $r{$_} for qw(requests errors seconds proxy_ticks busy_ticks total_ticks encrypted decrypted backend_ticks tool_ticks);
    $protos{$r{proto}} = 1;
    $sizes{$r{size}} = 1;
    $fields{$r{fields}} = 1;
}
my @protos = grep { $protos{$_} } qw(h1 h2);
my @sizes = sort { $a <=> $b } keys %sizes;
my @fields = sort { $a <=> $b } keys %fields;
my %pname = (h1 => 'HTTP/1.1', h2 => 'HTTP/2');

sub us { # proto case size fields -> CPU us per request, or undef
    my $a = $agg{join ' ', @_} or return undef;
    return undef unless $a->{requests};
    return $a->{proxy_ticks} / $hz / $a->{requests} * 1e6;
}
sub fmt { defined $_[0] ? sprintf('%.1f', $_[0]) : '' }
sub human {
    my $b = shift;
    return $b >= 1 << 20 ? sprintf('%g MiB', $b / (1 << 20)) : $b >= 1024 ? sprintf('%g KiB', $b / 1024) : "$b B";
}
sub slope { # us per KiB between two sizes
    my ($u1, $u2, $s1, $s2) = @_;
    return undef unless defined $u1 && defined $u2;
    return ($u2 - $u1) / (($s2 - $s1) / 1024);
}

print "### Proxy CPU per request, µs\n\n";
print "Each cell: the proxy's utime + stime over all measured seconds / the requests completed. ",
    "`nginx` and `plain` post the 4-field body and stream it; `sealed` seals N fields in the request and opens N in the answer; ",
    "`inline` is `sealed` with the offload to the blocking pool turned off (`limits.offload_threshold` above every body).\n\n";
my @fcols = map { "sealed $_" } @fields;
for my $p (@protos) {
    print "$pname{$p}:\n\n";
    print '| body | nginx | fieldseal plain | plain / nginx | ', join(' | ', @fcols), " | inline 4 | sealed 4 / nginx |\n";
    print '|---:|', '---:|' x (5 + @fields), "\n";
    for my $s (@sizes) {
        my $n = us($p, 'nginx', $s, 4);
        my $pl = us($p, 'plain', $s, 4);
        my @c = map { fmt(us($p, 'sealed', $s, $_)) || 'n/a' } @fields;
        my $s4 = us($p, 'sealed', $s, 4);
        my $in = us($p, 'inline', $s, 4);
        printf "| %s | %s | %s | %s | %s | %s | %s |\n", human($s), fmt($n), fmt($pl),
            (defined $n && defined $pl ? sprintf('%.2f', $pl / $n) : ''), join(' | ', @c), fmt($in),
            (defined $n && defined $s4 ? sprintf('%.2f', $s4 / $n) : '');
    }
    print "\n";
}

print "### Requests per second\n\n";
for my $p (@protos) {
    print "$pname{$p}:\n\n";
    print '| body | nginx | fieldseal plain | ', join(' | ', @fcols), " | inline 4 |\n";
    print '|---:|', '---:|' x (3 + @fields), "\n";
    for my $s (@sizes) {
        my $rps = sub {
            my $a = $agg{join ' ', $p, @_} or return '';
            return $a->{seconds} ? sprintf('%.0f', $a->{requests} / $a->{seconds}) : '';
        };
        printf "| %s | %s | %s | %s | %s |\n", human($s), $rps->('nginx', $s, 4), $rps->('plain', $s, 4),
            join(' | ', map { $rps->('sealed', $s, $_) || 'n/a' } @fields), $rps->('inline', $s, 4);
    }
    print "\n";
}

# Growth with bytes: marginal cost per KiB between the points of the matrix.
my @main = grep { $_ != 57344 && $_ != 73728 } @sizes;
print "### Growth with bytes: marginal µs per KiB between body sizes\n\n";
print "Linear growth shows as the same µs per KiB on every segment above a few KiB; quadratic growth as a marginal that grows with size.\n\n";
my @segs = map { [$main[$_ - 1], $main[$_]] } 1 .. $#main;
print '| protocol | case | ', join(' | ', map { human($_->[0]) . ' → ' . human($_->[1]) } @segs), " |\n";
print '|---|---|', '---:|' x @segs, "\n";
for my $p (@protos) {
    for my $c (['nginx', 4], ['plain', 4], map { ['sealed', $_] } @fields) {
        my @v = map { fmt(slope(us($p, $c->[0], $_->[0], $c->[1]), us($p, $c->[0], $_->[1], $c->[1]), @$_)) } @segs;
        next unless grep { $_ ne '' } @v;
        printf "| %s | %s | %s |\n", $pname{$p}, ($c->[0] eq 'sealed' ? "sealed $c->[1]" : $c->[0]), join(' | ', @v);
    }
}
print "\n";

# Growth with fields: marginal cost per sealed field at each size.
if (@fields > 1) {
    print "### Growth with fields: marginal µs per field (sealed and opened) at each body size\n\n";
    my @fp = map { [$fields[$_ - 1], $fields[$_]] } 1 .. $#fields;
    push @fp, [$fields[0], $fields[-1]] if @fields > 2;
    print '| protocol | body | ', join(' | ', map { "$_->[0] → $_->[1] fields" } @fp), " |\n";
    print '|---|---:|', '---:|' x @fp, "\n";
    for my $p (@protos) {
        for my $s (@sizes) {
            my @v = map {
                my ($a, $b) = (us($p, 'sealed', $s, $_->[0]), us($p, 'sealed', $s, $_->[1]));
                defined $a && defined $b ? sprintf('%.2f', ($b - $a) / ($_->[1] - $_->[0])) : 'n/a'
            } @fp;
            next unless grep { $_ ne 'n/a' } @v;
            printf "| %s | %s | %s |\n", $pname{$p}, human($s), join(' | ', @v);
        }
    }
    print "\n";
}

# The offload threshold: the probes just below and above 64 KiB, and the
# offloaded process against the inline one on the same bodies.
if (grep { $_ == 57344 } @sizes and grep { $_ == 73728 } @sizes) {
    print "### At the offload threshold (64 KiB)\n\n";
    print "Below 64 KiB both transforms run inline on the worker; a 64 KiB request (65,536 bytes) is still inline but its sealed answer is larger and goes to the blocking pool; at 72 KiB both go. ",
        "A cliff would show as a jump in the µs per KiB across the threshold, and as `sealed` costing more than `inline` on the same body.\n\n";
    print "| protocol | fields | 2 KiB → 56 KiB | 56 KiB → 64 KiB | 64 KiB → 72 KiB | 72 KiB → 1 MiB |\n|---|---:|---:|---:|---:|---:|\n";
    for my $p (@protos) {
        for my $f (@fields) {
            my @pts = (2048, 57344, 65536, 73728, 1048576);
            my @v = map { fmt(slope(us($p, 'sealed', $pts[$_ - 1], $f), us($p, 'sealed', $pts[$_], $f), $pts[$_ - 1], $pts[$_])) } 1 .. $#pts;
            printf "| %s | %d | %s |\n", $pname{$p}, $f, join(' | ', @v);
        }
    }
    print "\n| protocol | body | sealed (offloaded) µs | inline µs | offload cost µs | % |\n|---|---:|---:|---:|---:|---:|\n";
    for my $p (@protos) {
        for my $s (@sizes) {
            my ($o, $i) = (us($p, 'sealed', $s, 4), us($p, 'inline', $s, 4));
            next unless defined $o && defined $i;
            printf "| %s | %s | %.1f | %.1f | %+.1f | %+.1f%% |\n", $pname{$p}, human($s), $o, $i, $o - $i, 100 * ($o - $i) / $i;
        }
    }
    print "\n";
}

# Checks and noise.
my ($fmin, $fmax, $errs, $bmin, $bmax, $omin, $omax) = (9e9, 0, 0, 100, 0, 99, 0);
for my $k (keys %agg) {
    my $a = $agg{$k};
    my ($p, $c, $s, $f) = split / /, $k;
    $errs += $a->{errors};
    my $busy = $a->{total_ticks} ? 100 * $a->{busy_ticks} / $a->{total_ticks} : 0;
    $bmin = $busy if $busy < $bmin;
    $bmax = $busy if $busy > $bmax;
    if ($a->{total_ticks}) { # everything but the proxy, the backend and the load tool, in cores
        my $o = ($a->{busy_ticks} - $a->{proxy_ticks} - $a->{backend_ticks} - $a->{tool_ticks}) / ($a->{total_ticks} / $ncpu);
        $o = 0 if $o < 0;
        $omin = $o if $o < $omin;
        $omax = $o if $o > $omax;
    }
    next unless ($c eq 'sealed' || $c eq 'inline') && $a->{requests};
    for my $x ($a->{encrypted}, $a->{decrypted}) {
        my $r = $x / ($a->{requests} * $f);
        $fmin = $r if $r < $fmin;
        $fmax = $r if $r > $fmax;
    }
}
printf "Checks: %d errors (non-2xx, socket errors) over all cells; fieldseal's /metrics counted %.3f–%.3f × the expected fields encrypted and decrypted per completed request in every sealed cell (above 1 only by requests in flight when the load tool stopped). Machine CPU busy during the measured runs: %.0f–%.0f%% of %d cores, of which other processes (not the proxy, the backend or the load tool: other users' work) took %.2f–%.2f cores.\n",
    $errs, ($fmin == 9e9 ? 0 : $fmin), $fmax, $bmin, $bmax, $ncpu, ($omin == 99 ? 0 : $omin), $omax;
