package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
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
	}
	// legendNote says what each consumer is, in the legend.
	legendNote = map[string]string{
		cRecvlogical: "the ceiling",
		cNull:        "no broker",
		cKfake:       "in-memory broker",
		cApache:      "one KRaft node, a JVM",
		cPoller:      "SKIP LOCKED, to kfake",
	}
	drainOrder = []string{cRecvlogical, cNull, cKfake, cApache, cPoller}
	liveOrder  = []string{cKfake, cApache, cPoller}
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
	// Three to five grid lines at round values.
	step := niceCeil(maxV / 4)
	ticks := int(math.Ceil(maxV/step - 1e-9))
	top := step * float64(ticks)
	plot := image.Rect(rect.Min.X+labelW, rect.Min.Y+36, rect.Max.X-90, rect.Min.Y+36+groupsHeight(groups))
	for i := 0; i <= ticks; i++ {
		x := plot.Min.X + int(float64(plot.Dx())*float64(i)/float64(ticks))
		fill(img, x, plot.Min.Y, 1, plot.Dy(), colGrid)
		s := compact(step * float64(i))
		drawText(img, x-textWidth(s, 2)/2, plot.Max.Y+8, s, 2, colText)
	}
	drawText(img, plot.Min.X+plot.Dx()/2-textWidth(unit, 2)/2, plot.Max.Y+34, unit, 2, colText)
	y := plot.Min.Y
	for _, g := range groups {
		drawText(img, rect.Min.X, y+6, g.title, 2, colText)
		y += groupHead
		for _, b := range g.bars {
			drawText(img, rect.Min.X+14, y+3, b.consumer, 2, colMuted)
			w := int(float64(plot.Dx()) * b.value / top)
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

func writeChart(path string, e *env) error {
	var drains []barGroup
	seen := map[string]bool{}
	for _, shape := range shapes {
		g := barGroup{title: chartShapeName(shape)}
		for _, c := range drainOrder {
			if d, ok := e.drain(shape, c); ok {
				g.bars = append(g.bars, bar{c, d.rate(), rateLabel(d.rate())})
				seen[c] = true
			}
		}
		if len(g.bars) > 0 {
			drains = append(drains, g)
		}
	}
	var live []barGroup
	for _, p := range []struct {
		name string
		f    func(percentiles) time.Duration
	}{
		{"p50", func(p percentiles) time.Duration { return p.P50 }},
		{"p95", func(p percentiles) time.Duration { return p.P95 }},
		{"p99", func(p percentiles) time.Duration { return p.P99 }},
	} {
		g := barGroup{title: p.name}
		for _, c := range liveOrder {
			if l, ok := e.liveOf(c); ok {
				v := float64(p.f(l.CreateToAck)) / float64(time.Millisecond)
				g.bars = append(g.bars, bar{c, v, msLabel(v)})
				seen[c] = true
			}
		}
		if len(g.bars) > 0 {
			live = append(live, g)
		}
	}

	const width, top = 1640, 96
	plotH := max(groupsHeight(drains), groupsHeight(live))
	legendY := top + 36 + plotH + 70
	height := legendY + 80 // two lines of legend
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)

	drawText(img, 20, 16, "outbox-relay: draining a backlog, and live latency", 3, colText)
	sub := fmt.Sprintf("%s events per shape; %d CPUs shared by PostgreSQL, the brokers and the relay; %s",
		thousands(e.o.events), e.res.Machine.CPUs, e.res.Started.UTC().Format("2006-01-02"))
	drawText(img, 20, 52, sub, 2, colMuted)

	panel(img, image.Rect(20, top, 830, top+plotH+80), "Backlog drain throughput (higher is better)", "events/s", drains)
	fill(img, 845, top, 1, plotH+80, colGrid)
	panel(img, image.Rect(860, top, width-10, top+plotH+80),
		fmt.Sprintf("Live insert-to-ack latency at %s ev/s (lower is better)", thousands(e.o.rate)), "milliseconds", live)

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
