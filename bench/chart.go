package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"time"
)

// The chart is drawn with the standard library alone: bars, axes, and
// values in a 3x5 pixel font of digits; the legend is in RESULTS.md.

var (
	colBG         = color.RGBA{255, 255, 255, 255}
	colAxis       = color.RGBA{60, 60, 60, 255}
	colGrid       = color.RGBA{225, 225, 225, 255}
	colText       = color.RGBA{30, 30, 30, 255}
	consumerColor = map[string]color.RGBA{
		"pg_recvlogical": {150, 150, 150, 255},
		"relay->null":    {66, 133, 244, 255},
		"relay->kafka":   {52, 168, 83, 255},
		"poller->kafka":  {251, 140, 0, 255},
	}
)

// glyphs is a 3x5 font: each row is 3 bits, high bit on the left.
var glyphs = map[rune][5]uint8{
	'0': {7, 5, 5, 5, 7}, '1': {2, 6, 2, 2, 7}, '2': {7, 1, 7, 4, 7}, '3': {7, 1, 7, 1, 7},
	'4': {5, 5, 7, 1, 1}, '5': {7, 4, 7, 1, 7}, '6': {7, 4, 7, 5, 7}, '7': {7, 1, 1, 1, 1},
	'8': {7, 5, 7, 5, 7}, '9': {7, 5, 7, 1, 7}, '.': {0, 0, 0, 0, 2}, 'k': {4, 5, 6, 5, 5},
	'x': {0, 5, 2, 5, 0}, ' ': {},
}

const scale = 3

func textWidth(s string) int { return len(s) * 4 * scale }

func drawText(img *image.RGBA, x, y int, s string, c color.Color) {
	for _, r := range s {
		g := glyphs[r]
		for row := range 5 {
			for col := range 3 {
				if g[row]&(4>>col) != 0 {
					fill(img, x+col*scale, y+row*scale, scale, scale, c)
				}
			}
		}
		x += 4 * scale
	}
}

func fill(img *image.RGBA, x, y, w, h int, c color.Color) {
	draw.Draw(img, image.Rect(x, y, x+w, y+h), &image.Uniform{c}, image.Point{}, draw.Src)
}

type bar struct {
	value float64
	label string
	color color.RGBA
}

// panel draws groups of bars in rect, scaled to the largest value, with
// horizontal grid lines at round values.
func panel(img *image.RGBA, rect image.Rectangle, groups [][]bar) {
	maxV := 0.0
	for _, g := range groups {
		for _, b := range g {
			maxV = max(maxV, b.value)
		}
	}
	if maxV == 0 {
		return
	}
	top := niceCeil(maxV)
	plot := image.Rect(rect.Min.X+90, rect.Min.Y+30, rect.Max.X-10, rect.Max.Y-20)
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		y := plot.Max.Y - int(float64(plot.Dy())*float64(i)/4)
		fill(img, plot.Min.X, y, plot.Dx(), 1, colGrid)
		s := compact(v)
		drawText(img, plot.Min.X-10-textWidth(s), y-7, s, colText)
	}
	fill(img, plot.Min.X, plot.Min.Y, 2, plot.Dy(), colAxis)
	fill(img, plot.Min.X, plot.Max.Y, plot.Dx(), 2, colAxis)

	n := len(groups)
	groupW := plot.Dx() / max(n, 1)
	for gi, g := range groups {
		if len(g) == 0 {
			continue
		}
		barW := min((groupW-40)/len(g), 90)
		x := plot.Min.X + gi*groupW + (groupW-barW*len(g))/2
		for _, b := range g {
			h := int(float64(plot.Dy()) * b.value / top)
			fill(img, x+4, plot.Max.Y-h, barW-8, h, b.color)
			lx := x + barW/2 - textWidth(b.label)/2
			drawText(img, lx, plot.Max.Y-h-20, b.label, colText)
			x += barW
		}
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// compact formats v as 12k, 3.5k, 840, 12.5.
func compact(v float64) string {
	switch {
	case v >= 10000 && math.Mod(v, 1000) == 0:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 100000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}

func writeChart(path string, e *env) error {
	img := image.NewRGBA(image.Rect(0, 0, 1400, 520))
	draw.Draw(img, img.Bounds(), &image.Uniform{colBG}, image.Point{}, draw.Src)

	var tp [][]bar
	for _, shape := range shapes {
		var g []bar
		for _, c := range []string{"pg_recvlogical", "relay->null", "relay->kafka", "poller->kafka"} {
			if d, ok := e.drain(shape, c); ok {
				g = append(g, bar{d.rate(), compact(d.rate()), consumerColor[c]})
			}
		}
		if len(g) > 0 {
			tp = append(tp, g)
		}
	}
	panel(img, image.Rect(0, 0, 820, 520), tp)

	var lat [][]bar
	pick := []func(percentiles) time.Duration{
		func(p percentiles) time.Duration { return p.P50 },
		func(p percentiles) time.Duration { return p.P95 },
		func(p percentiles) time.Duration { return p.P99 },
	}
	for _, f := range pick {
		var g []bar
		for _, c := range []string{"relay->kafka", "poller->kafka"} {
			if l, ok := e.liveOf(c); ok {
				v := float64(f(l.CreateToAck)) / float64(time.Millisecond)
				g = append(g, bar{v, compact(v), consumerColor[c]})
			}
		}
		if len(g) > 0 {
			lat = append(lat, g)
		}
	}
	fill(img, 830, 20, 1, 480, colGrid)
	panel(img, image.Rect(840, 0, 1400, 520), lat)

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
