//! `loss.png`: the chart is a real PNG of the documented size, with the training curve and
//! the validation points in their colours, and the CSV reader keeps only parsable, finite
//! rows of each split.

use hymba_train::plot::{SIZE, TRAIN_COLOUR, VALID_COLOUR, read_loss_csv, write_loss_png};

fn count_colour(img: &image::RgbImage, c: plotters::style::RGBColor) -> usize {
    img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
}

#[test]
fn csv_reader_keeps_finite_rows_of_each_split() {
    let csv = "step,split,loss,lr,grad_norm,tokens_per_s\n\
               1,train,5.5,0.001,1.0,100\n\
               2,train,NaN,0.001,1.0,100\n\
               garbage\n\
               2,valid,5.0,,,\n\
               3,train,4.5,0.001,1.0,100\n";
    let (train, valid) = read_loss_csv(csv);
    assert_eq!(train, vec![(1.0, 5.5), (3.0, 4.5)]);
    assert_eq!(valid, vec![(2.0, 5.0)]);
}

#[test]
fn chart_has_both_curves() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let csv = tmp.path().join("loss.csv");
    let png = tmp.path().join("loss.png");
    let mut text = String::from("step,split,loss,lr,grad_norm,tokens_per_s\n");
    for s in 1..=50 {
        text.push_str(&format!(
            "{s},train,{},0.001,1.0,100\n",
            8.0 - 0.05 * s as f64
        ));
        if s % 10 == 0 {
            text.push_str(&format!("{s},valid,{},,,\n", 8.2 - 0.05 * s as f64));
        }
    }
    std::fs::write(&csv, text).expect("write csv");
    write_loss_png(&csv, &png, "test run").expect("plot");
    let img = image::open(&png).expect("a decodable PNG").to_rgb8();
    assert_eq!(img.dimensions(), SIZE);
    assert!(count_colour(&img, TRAIN_COLOUR) > 500, "no training curve");
    assert!(
        count_colour(&img, VALID_COLOUR) > 100,
        "no validation points"
    );
    // Text was drawn (axis labels, title): dark pixels that are neither curve.
    let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 60)).count();
    assert!(dark > 1000, "no text or axes: {dark} dark pixels");

    // A run with no step yet writes no chart and is no error.
    let empty = tmp.path().join("empty.csv");
    std::fs::write(&empty, "step,split,loss,lr,grad_norm,tokens_per_s\n").expect("write");
    let none = tmp.path().join("none.png");
    write_loss_png(&empty, &none, "empty").expect("no error");
    assert!(!none.exists());
}
