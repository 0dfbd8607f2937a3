#!/usr/bin/env perl
# Writes a JSON document of exactly SIZE bytes to stdout with FIELDS members
# "ssn" (selected by the rule $.items[*].ssn), spread evenly over an array of
# customer-like records. Deterministic: the same arguments give the same bytes.
#
#   bench/gen-body.pl SIZE FIELDS > body.json
#
# Exits 2 when FIELDS "ssn" members cannot fit in SIZE bytes.
use strict;
use warnings;

my ($size, $fields) = @ARGV;
die "usage: $0 SIZE FIELDS\n" unless defined $fields && $size =~ /^\d+$/ && $fields =~ /^\d+$/;

my @words = qw(alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima);
sub record {
    my ($i, $with_field) = @_;
    my $w = $words[$i % @words];
    my $ssn = $with_field ? sprintf(',"ssn":"%03d-%02d-%04d"', 100 + $i % 900, 10 + $i % 90, $i % 10000) : '';
    # strings with an escape or two, numbers, booleans, a nested array: what the scanner meets in real bodies
    return sprintf('{"id":%d,"name":"user-%06d","email":"user%06d@example.com"%s,"active":%s,"score":%d.%02d,'
            . '"tags":["%s","tier-%d"],"note":"%s \"%s\" account\nopened by %s"}',
        $i, $i, $i, $ssn, ($i % 3 ? 'true' : 'false'), $i % 1000, $i % 100, $w, $i % 7, $w, $words[($i + 5) % @words],
        $words[($i + 3) % @words]);
}
sub minimal { # the smallest record that holds one field
    my ($i) = @_;
    return sprintf('{"ssn":"%03d-%02d-%04d"}', 100 + $i % 900, 10 + $i % 90, $i % 10000);
}
sub document {
    my ($items) = @_;
    return '{"items":[' . join(',', @$items) . ']';    # closed below, after the padding
}
sub build {
    my ($n, $minimal) = @_;
    my @items;
    my $next = 0;    # record index that carries the next field
    my $k = 0;
    for my $i (0 .. $n - 1) {
        my $with = $k < $fields && $i == $next;
        if ($with) { $k++; $next = int($k * $n / $fields) }
        push @items, $minimal ? minimal($i) : record($i, $with);
    }
    return document(\@items);
}

my $avg = length(record(1, 0));
my $n = int(($size - 12) / $avg);
$n = $fields if $n < $fields;
my $doc = build($n, 0);
while (length($doc) + 1 > $size && $n > $fields) { $n--; $doc = build($n, 0); }
$doc = build($fields, 1) if length($doc) + 1 > $size;
my $room = $size - length($doc) - 1;
if ($room < 0) { print STDERR "$fields fields do not fit in $size bytes\n"; exit 2; }
# pad to the exact size: a member nobody selects, or whitespace when there is no room for one
my $pad = $room >= 9 ? ',"pad":"' . ('x' x ($room - 9)) . '"' : (' ' x $room);
print $doc, $pad, '}';
