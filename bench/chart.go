package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The chart is drawn with the standard library alone: horizontal bars,
// axes, and text in a 5x7 pixel font (font5x7) drawn at 2 or 3 times its
// size.

var (
	colBG         = color.RGBA{255, 255, 255, 255}
	colAxis       = color.RGBA{60, 60, 60, 255}
	colGrid       = color.RGBA{225, 225, 225, 255}
	colText       = color.RGBA{30, 30, 30, 255}
	colMuted      = color.RGBA{110, 110, 110, 255}
	consumerColor = map[string]color.RGBA{
		cRecvlogical: {150, 150, 150, 255},
		cNull:        {66, 133, 244, 255},
		cKfake:       {52, 168, 83, 255},
		cApache:      {123, 31, 162, 255},
		cPoller:      {251, 140, 0, 255},
		cKfakeEOS:    {129, 199, 132, 255},
		cApacheEOS:   {186, 104, 200, 255},
		cDebezium:    {211, 47, 47, 255},
		cWalListener: {0, 151, 167, 255},
	}
	// legendNote says what each consumer is, in the legend.
	legendNote = map[string]string{
		cRecvlogical: "the ceiling",
		cNull:        "no broker",
		cKfake:       "in-memory broker",
		cApache:      "one KRaft node, a JVM",
		cPoller:      "SKIP LOCKED, to kfake",
		cKfakeEOS:    "Kafka transactions",
		cApacheEOS:   "Kafka transactions",
		cDebezium:    "Kafka Connect, to Apache Kafka",
		cWalListener: "to Apache Kafka",
	}
	// chartName is a consumer's name left of its bar, where the space is
	// short.
	chartName = map[string]string{
		cKfakeEOS:    "relay->kfake EOS",
		cApacheEOS:   "relay->Apache EOS",
		cDebezium:    "Debezium->Apache",
		cWalListener: "wal-listener->Apache",
	}
	drainOrder = []string{cRecvlogical, cNull, cKfake, cKfakeEOS, cApache, cApacheEOS, cDebezium, cWalListener, cPoller}
	liveOrder  = []string{cKfake, cKfakeEOS, cApache, cApacheEOS, cDebezium, cPoller}
)

// font5x7 has the characters the chart writes: 5 columns, 7 rows above the
// baseline and one below it for descenders.
var font5x7 = map[rune][8]string{
	' ':  {".....", ".....", ".....", ".....", ".....", ".....", ".....", "....."},
	'0':  {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.", "....."},
	'1':  {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."},
	'2':  {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####", "....."},
	'3':  {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###.", "....."},
	'4':  {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.", "....."},
	'5':  {"#####", "#....", "####.", "....#", "....#", "#...#", ".###.", "....."},
	'6':  {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.", "....."},
	'7':  {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...", "....."},
	'8':  {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.", "....."},
	'9':  {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..", "....."},
	'A':  {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", "....."},
	'B':  {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.", "....."},
	'C':  {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.", "....."},
	'D':  {"###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..", "....."},
	'E':  {"#####", "#....", "#....", "####.", "#....", "#....", "#####", "....."},
	'F':  {"#####", "#....", "#....", "####.", "#....", "#....", "#....", "....."},
	'G':  {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####", "....."},
	'H':  {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", "....."},
	'I':  {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."},
	'J':  {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..", "....."},
	'K':  {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#", "....."},
	'L':  {"#....", "#....", "#....", "#....", "#....", "#....", "#####", "....."},
	'M':  {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#", "....."},
	'N':  {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "....."},
	'O':  {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.", "....."},
	'P':  {"####.", "#...#", "#...#", "####.", "#....", "#....", "#....", "....."},
	'Q':  {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#", "....."},
	'R':  {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#", "....."},
	'S':  {".####", "#....", "#....", ".###.", "....#", "....#", "####.", "....."},
	'T':  {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "....."},
	'U':  {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.", "....."},
	'V':  {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..", "....."},
	'W':  {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.", "....."},
	'X':  {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#", "....."},
	'Y':  {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..", "....."},
	'Z':  {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####", "....."},
	'a':  {".....", ".....", ".###.", "....#", ".####", "#...#", ".####", "....."},
	'b':  {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####.", "....."},
	'c':  {".....", ".....", ".###.", "#....", "#....", "#...#", ".###.", "....."},
	'd':  {"....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####", "....."},
	'e':  {".....", ".....", ".###.", "#...#", "#####", "#....", ".###.", "....."},
	'f':  {"..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#...", "....."},
	'g':  {".....", ".....", ".####", "#...#", "#...#", ".####", "....#", ".###."},
	'h':  {"#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#", "....."},
	'i':  {"..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###.", "....."},
	'j':  {"...#.", ".....", "..##.", "...#.", "...#.", "...#.", "#..#.", ".##.."},
	'k':  {"#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "....."},
	'l':  {".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.", "....."},
	'm':  {".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#", "....."},
	'n':  {".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#", "....."},
	'o':  {".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###.", "....."},
	'p':  {".....", ".....", "####.", "#...#", "#...#", "####.", "#....", "#...."},
	'q':  {".....", ".....", ".####", "#...#", "#...#", ".####", "....#", "....#"},
	'r':  {".....", ".....", "#.##.", "##..#", "#....", "#....", "#....", "....."},
	's':  {".....", ".....", ".####", "#....", ".###.", "....#", "####.", "....."},
	't':  {".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##.", "....."},
	'u':  {".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#", "....."},
	'v':  {".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#..", "....."},
	'w':  {".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#.", "....."},
	'x':  {".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "....."},
	'y':  {".....", ".....", "#...#", "#...#", "#...#", ".####", "....#", ".###."},
	'z':  {".....", ".....", "#####", "...#.", "..#..", ".#...", "#####", "....."},
	'.':  {".....", ".....", ".....", ".....", ".....", ".##..", ".##..", "....."},
	',':  {".....", ".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."},
	':':  {".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....", "....."},
	';':  {".....", ".##..", ".##..", ".....", ".##..", ".##..", "..#..", ".#..."},
	'-':  {".....", ".....", ".....", "#####", ".....", ".....", ".....", "....."},
	'>':  {".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#...", "....."},
	'<':  {"...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#.", "....."},
	'/':  {".....", "....#", "...#.", "..#..", ".#...", "#....", ".....", "....."},
	'(':  {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.", "....."},
	')':  {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...", "....."},
	'%':  {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##", "....."},
	'=':  {".....", ".....", "#####", ".....", "#####", ".....", ".....", "....."},
	'+':  {".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....", "....."},
	'_':  {".....", ".....", ".....", ".....", ".....", ".....", ".....", "#####"},
	'\'': {"..#..", "..#..", ".#...", ".....", ".....", ".....", ".....", "....."},
	'?':  {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#..", "....."},
}

// textWidth is the width of s drawn at scale: 6 columns a character (5
// and a space).
func textWidth(s string, scale int) int { return len([]rune(s)) * 6 * scale }

// drawText draws s with its top left corner at (x, y); a character the font
// lacks is drawn as '?'.
func drawText(img *image.RGBA, x, y int, s string, scale int, c color.Color) {
	for _, r := range s {
		g, ok := font5x7[r]
		if !ok {
			g = font5x7['?']
		}
		for row, bits := range g {
			for col, b := range bits {
				if b == '#' {
					fill(img, x+col*scale, y+row*scale, scale, scale, c)
				}
			}
		}
		x += 6 * scale
	}
}

func fill(img *image.RGBA, x, y, w, h int, c color.Color) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

type bar struct {
	consumer string
	value    float64
	label    string
}

type barGroup struct {
	title string
	bars  []bar
}

const (
	barH      = 20
	barGap    = 6
	groupHead = 28
	groupGap  = 14
	labelW    = 290 // the consumer names left of the bars
)

// groupsHeight is the height the groups take in a panel.
func groupsHeight(groups []barGroup) int {
	h := 0
	for _, g := range groups {
		h += groupHead + len(g.bars)*(barH+barGap) + groupGap
	}
	return h
}

// panel draws a titled panel of horizontal bars in rect: groups under their
// headings, each bar named on its left and its value at its end, and an x
// axis scaled to the largest value with its unit under it.
func panel(img *image.RGBA, rect image.Rectangle, title, unit string, groups []barGroup) {
	drawText(img, rect.Min.X, rect.Min.Y, title, 2, colText)
	maxV := 0.0
	for _, g := range groups {
		for _, b := range g.bars {
			maxV = max(maxV, b.value)
		}
	}
	if maxV == 0 {
		drawText(img, rect.Min.X, rect.Min.Y+40, "no results", 2, colMuted)
		return
	}
	minV := maxV
	for _, g := range groups {
		for _, b := range g.bars {
			if b.value > 0 {
				minV = min(minV, b.value)
			}
		}
	}
	plot := image.Rect(rect.Min.X+labelW, rect.Min.Y+36, rect.Max.X-90, rect.Min.Y+36+groupsHeight(groups))
	// Bars spanning more than 30x go on a log scale, grid lines at powers
	// of ten; else three to five grid lines at round values.
	var length func(v float64) int
	if maxV/minV > 30 {
		lo, hi := math.Floor(math.Log10(minV)), math.Ceil(math.Log10(maxV))
		if hi == lo {
			hi++
		}
		length = func(v float64) int {
			if v <= 0 {
				return 0
			}
			return int(float64(plot.Dx()) * (math.Log10(v) - lo) / (hi - lo))
		}
		for e := lo; e <= hi; e++ {
			x := plot.Min.X + length(math.Pow(10, e))
			fill(img, x, plot.Min.Y, 1, plot.Dy(), colGrid)
			s := compact(math.Pow(10, e))
			drawText(img, x-textWidth(s, 2)/2, plot.Max.Y+8, s, 2, colText)
		}
		unit += " (log scale)"
	} else {
		step := niceCeil(maxV / 4)
		ticks := int(math.Ceil(maxV/step - 1e-9))
		top := step * float64(ticks)
		length = func(v float64) int { return int(float64(plot.Dx()) * v / top) }
		for i := 0; i <= ticks; i++ {
			x := plot.Min.X + int(float64(plot.Dx())*float64(i)/float64(ticks))
			fill(img, x, plot.Min.Y, 1, plot.Dy(), colGrid)
			s := compact(step * float64(i))
			drawText(img, x-textWidth(s, 2)/2, plot.Max.Y+8, s, 2, colText)
		}
	}
	drawText(img, plot.Min.X+plot.Dx()/2-textWidth(unit, 2)/2, plot.Max.Y+34, unit, 2, colText)
	y := plot.Min.Y
	for _, g := range groups {
		drawText(img, rect.Min.X, y+6, g.title, 2, colText)
		y += groupHead
		for _, b := range g.bars {
			name := b.consumer
			if n, ok := chartName[name]; ok {
				name = n
			}
			drawText(img, rect.Min.X+14, y+3, name, 2, colMuted)
			w := length(b.value)
			fill(img, plot.Min.X, y, max(w, 1), barH, consumerColor[b.consumer])
			drawText(img, plot.Min.X+w+6, y+3, b.label, 2, colText)
			y += barH + barGap
		}
		y += groupGap
	}
	fill(img, plot.Min.X, plot.Min.Y, 2, plot.Dy(), colAxis)
	fill(img, plot.Min.X, plot.Max.Y, plot.Dx(), 2, colAxis)
}

// rateLabel formats a bar's events/s with three digits: 146k, 63.6k, 980.
func rateLabel(v float64) string {
	switch {
	case v >= 100000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

// msLabel formats a bar's milliseconds: 4.4, 154, 1,203.
func msLabel(v float64) string {
	if v >= 100 {
		return thousands(int(math.Round(v)))
	}
	return fmt.Sprintf("%.1f", v)
}

// chartShapeName is a shape's heading in the chart, short enough for the
// space left of the bars.
func chartShapeName(s string) string {
	switch s {
	case "batch":
		return "1,000-row txns"
	case "message":
		return "message mode, 1,000/txn"
	case "single":
		return "single-row txns"
	}
	return s
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// compact formats an axis value as 120k, 2.5k, 2k, 840, 12.5, 0.
func compact(v float64) string {
	var s string
	switch {
	case v >= 100000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		s = strings.TrimSuffix(fmt.Sprintf("%.1f", v/1000), ".0") + "k"
	case v >= 100:
		s = fmt.Sprintf("%.0f", v)
	default:
		s = strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0")
	}
	return s
}

// Chart files in the results directory.
const (
	drainChart   = "drain.png"
	latencyChart = "latency.png"
)

// writeCharts writes the drain throughput chart and the live latency chart
// into dir.
func writeCharts(dir string, e *env) error {
	var drains []barGroup
	drainSeen := map[string]bool{}
	for _, shape := range shapes {
		g := barGroup{title: chartShapeName(shape)}
		for _, c := range drainOrder {
			if d, ok := e.drain(shape, c); ok {
				g.bars = append(g.bars, bar{c, d.rate(), rateLabel(d.rate())})
				drainSeen[c] = true
			}
		}
		if len(g.bars) > 0 {
			drains = append(drains, g)
		}
	}
	var live []barGroup
	liveSeen := map[string]bool{}
	for _, p := range []struct {
		name string
		f    func(percentiles) time.Duration
	}{
		{"p50 (median)", func(p percentiles) time.Duration { return p.P50 }},
		{"p95", func(p percentiles) time.Duration { return p.P95 }},
		{"p99", func(p percentiles) time.Duration { return p.P99 }},
	} {
		g := barGroup{title: p.name}
		for _, c := range liveOrder {
			if l, ok := e.liveOf(c); ok {
				v := float64(p.f(l.CreateToAck)) / float64(time.Millisecond)
				g.bars = append(g.bars, bar{c, v, msLabel(v)})
				liveSeen[c] = true
			}
		}
		if len(g.bars) > 0 {
			live = append(live, g)
		}
	}
	sub := fmt.Sprintf("%d CPUs shared by PostgreSQL, the brokers and the consumers; %s", e.res.Machine.CPUs, e.res.Started.UTC().Format("2006-01-02"))
	if err := drawChart(filepath.Join(dir, drainChart), "Draining a backlog: events/s per consumer",
		fmt.Sprintf("%s events per shape, each consumer on its own slot;\n%s", thousands(e.o.events), sub),
		"Drain throughput, grouped by transaction shape (higher is better)", "events/s", drains, drainSeen); err != nil {
		return err
	}
	return drawChart(filepath.Join(dir, latencyChart), fmt.Sprintf("Live latency at %s events/s: insert to ack", thousands(e.o.rate)),
		"single-row transactions; exactly-once and Debezium: insert to a consumer seeing the record;\n"+sub,
		"Latency percentiles, grouped by percentile (lower is better)", "milliseconds", live, liveSeen)
}

// drawChart draws one titled panel of bar groups with a legend of the
// consumers seen.
func drawChart(path, title, sub, panelTitle, unit string, groups []barGroup, seen map[string]bool) error {
	const width, top = 1200, 120
	plotH := groupsHeight(groups)
	legendY := top + 36 + plotH + 70
	height := legendY + 30*len(seen) + 40 // at worst a legend line each
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)

	drawText(img, 20, 16, title, 3, colText)
	for i, line := range strings.Split(sub, "\n") {
		drawText(img, 20, 52+i*24, line, 2, colMuted)
	}
	panel(img, image.Rect(20, top, width-10, top+plotH+80), panelTitle, unit, groups)

	// The legend: a swatch and a note for each consumer drawn.
	x := 20
	drawText(img, x, legendY+4, "Legend:", 2, colText)
	x += textWidth("Legend: ", 2)
	for _, c := range drainOrder {
		if !seen[c] {
			continue
		}
		s := fmt.Sprintf("%s (%s)", c, legendNote[c])
		if x+26+textWidth(s, 2) > width-20 {
			x, legendY = 20+textWidth("Legend: ", 2), legendY+30
		}
		fill(img, x, legendY+2, 18, 18, consumerColor[c])
		drawText(img, x+26, legendY+4, s, 2, colText)
		x += 26 + textWidth(s, 2) + 24
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// thousands formats n with commas: 1,000,000.
func thousands(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
